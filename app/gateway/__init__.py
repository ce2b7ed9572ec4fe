"""The data plane: engine, OpenAI-compatible server, control-state sync."""
