"""The one seam to OCI registries and container engines.

``ref`` parses image references, ``media`` names media types and platforms,
``registry`` is the registry client for pull *and* push (with one authentication
path), and ``engine`` is the only module that talks to Docker or Podman.
"""
