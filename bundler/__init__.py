"""airgap: signed bundles that carry a private LLM stack for Elastic into air-gapped networks."""

__version__ = "0.2.0"
