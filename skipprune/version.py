"""The version of skipprune, readable without importing any stage."""

__version__ = "0.5.0"
