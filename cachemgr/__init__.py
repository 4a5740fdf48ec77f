"""cachemgr: an offline cache manager and mirror for TensorFlow Hub models."""

__version__ = "0.1.0"
