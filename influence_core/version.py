"""The package version, in one place (read by the package and written into factor files)."""

__version__ = "0.1.0"
