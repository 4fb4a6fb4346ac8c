"""The bundle's SBOM: CycloneDX (signed member) and SPDX, licences, image packages."""
