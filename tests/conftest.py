"""Shared fixtures: the packaged models, loaded once for the whole test session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def embedder():
    """The packaged embedder (all-MiniLM-L6-v2)."""
    from llmtwin.config import EmbedderConfig
    from llmtwin.models.get import get_embedder

    return get_embedder(EmbedderConfig())


@pytest.fixture(scope="session")
def llm():
    """The packaged LLM with backend auto (llama.cpp when installed)."""
    from llmtwin.config import LLMConfig
    from llmtwin.models.get import get_llm

    return get_llm(LLMConfig())


@pytest.fixture(scope="session")
def hf_llm():
    """The packaged LLM through transformers, on the dequantised safetensors cache."""
    from llmtwin.config import LLMConfig
    from llmtwin.models.get import get_llm

    return get_llm(LLMConfig(backend="transformers"))
