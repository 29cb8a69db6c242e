"""tasktune.serve: the trained assistant behind an OpenAI-compatible HTTP API (engine, tools, app)."""
