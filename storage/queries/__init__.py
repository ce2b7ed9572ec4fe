"""Query functions over the store: Core statements, never ORM objects on hot paths."""
