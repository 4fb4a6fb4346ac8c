"""The bundle format v1 (``airgap-bundle/1``): index, signatures, writer and reader."""
