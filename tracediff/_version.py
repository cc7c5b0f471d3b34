"""The package version, read by pyproject.toml (setuptools dynamic version) and ``td.__version__``."""
__version__ = "0.1.0"
