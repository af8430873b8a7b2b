"""The package's version (one place: setup.cfg, the schema documents and telemetry read it here)."""

__version__ = "0.8.0"
