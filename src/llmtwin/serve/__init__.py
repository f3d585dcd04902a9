"""Serving: the OpenAI-compatible HTTP API, API keys, the generation queue and the web UI (`twin serve`)."""
