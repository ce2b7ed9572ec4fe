"""Pure domain: no Qt, no SQL, no network (enforced by import-linter)."""
