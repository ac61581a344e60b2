"""0k-Sync: zero-knowledge sync for local-first applications."""

__version__ = "0.1.0"

__all__ = ["__version__"]
