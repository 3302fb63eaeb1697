"""FastAPI app: ingest, admin API, health and metrics."""
