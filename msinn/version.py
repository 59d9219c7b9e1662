"""Package version, importable without importing torch."""

__version__ = "0.2.0"
