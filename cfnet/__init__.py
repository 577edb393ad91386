"""cfnet: policy-driven container networking for Cloud Foundry-style platforms."""

__version__ = "0.1.0"
