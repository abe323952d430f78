"""radbridge core: domain model, store, spool, study lifecycle, service and CLI."""

__version__ = "0.1.0"
