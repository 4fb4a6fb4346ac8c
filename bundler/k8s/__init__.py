"""Kubernetes delivery: the model as an OCI artifact, a kustomize base, ``kubectl``."""
