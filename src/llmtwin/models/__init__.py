"""How to get an LLM and an embedder: packaged defaults, local HF dirs, OpenAI-compatible endpoints."""
