"""The bundle format (``airgap-bundle/2``, still reading ``/1``): index, signatures, I/O."""
