"""Control Room: a desktop control room for LLM API dependencies."""

__version__ = "0.1.0"
