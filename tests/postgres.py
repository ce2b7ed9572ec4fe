"""The real PostgreSQL fixture (filled in by the storage work)."""
