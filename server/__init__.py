"""gradwatch's server: FastAPI app, job manager, store and live fan-out."""

__version__ = "0.1.0"
