"""Log sources and the ingest pipeline."""
