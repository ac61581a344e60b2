"""The package's version, in a module of its own so that any layer can name it without
importing the package's public API (and everything under it)."""

__version__ = "0.2.0"
