"""Shared fixtures: the packaged models, loaded once for the whole test session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads must not spin (as `twin` sets it)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# ---------------------------------------------------------------- the `model` marker, `make test-fast`

# Tests that use one of these fixtures (directly or through other fixtures) load a model: they are
# marked `model` at collection. Tests that load one otherwise (Twin(...).ingest/search/ask, get_llm,
# training, `twin ingest|search|ask|serve|train` as a subprocess) carry `@pytest.mark.model` or a
# module `pytestmark`. `make test-fast` runs `-m "not model"`.
MODEL_FIXTURES = frozenset({"embedder", "llm", "hf_llm", "smollm2_dir"})
FAST_GUARD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_fast_guard")


def _fast_run(config) -> bool:
    """A run that must load no model: LLMTWIN_TEST_FAST=1 or a `-m` expression with `not model`."""
    return os.environ.get("LLMTWIN_TEST_FAST") == "1" or "not model" in (config.getoption("markexpr", "") or "")


def pytest_configure(config):
    if not _fast_run(config):
        return
    # Every model load of this process and of its Python subprocesses (tests/_fast_guard) raises and
    # is logged; a test whose run logged one fails even if the code under test caught the error.
    import importlib.util
    import tempfile

    fd, log = tempfile.mkstemp(prefix="llmtwin-fast-guard-", suffix=".log")
    os.close(fd)
    config._llmtwin_fast_guard_log = log
    os.environ["LLMTWIN_TEST_FAST"] = "1"
    os.environ["LLMTWIN_FAST_GUARD_LOG"] = log
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (FAST_GUARD, os.environ.get("PYTHONPATH")) if p)
    spec = importlib.util.spec_from_file_location("_llmtwin_fast_guard", os.path.join(FAST_GUARD, "sitecustomize.py"))
    guard = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(guard)  # installs itself (LLMTWIN_TEST_FAST=1)


def pytest_unconfigure(config):
    log = getattr(config, "_llmtwin_fast_guard_log", None)
    if log and os.path.exists(log):
        os.unlink(log)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects
def pytest_collection_modifyitems(config, items):
    for item in items:
        if MODEL_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.model)


def _guard_lines(config) -> list[str]:
    log = getattr(config, "_llmtwin_fast_guard_log", None)
    if not log:
        return []
    with open(log, encoding="utf-8") as f:
        return f.read().splitlines()


@pytest.fixture(autouse=True)
def _no_model_in_fast_runs(request):
    """In a fast run, a test during which any process tried to load a model fails (in its teardown)."""
    before = len(_guard_lines(request.config))
    yield
    new = _guard_lines(request.config)[before:]
    if new:
        pytest.fail("loaded a model in a fast run (mark it `model`):\n" + "\n".join(new), pytrace=False)


def pytest_sessionfinish(session, exitstatus):
    lines = _guard_lines(session.config)
    if lines:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter:
            reporter.write_sep("=", f"{len(lines)} model load(s) in a fast run", red=True)
            for line in lines:
                reporter.write_line(line)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


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


# ---------------------------------------------------------------- integration-test corpora

# ~150 words of prose: the near-duplicate test changes three words of it.
ESSAY = (
    "The lighthouse keeper climbed the spiral stairs every evening before sunset to light the great "
    "lamp. For forty years he had watched the ships pass through the narrow channel between the "
    "rocks, counting sails and noting the weather in a leather journal. Storms came often in the "
    "autumn, and the waves would break against the tower with a sound like distant thunder. He "
    "trimmed the wick, polished the lens and wound the clockwork that turned the beam across the "
    "dark water. Fishermen in the village below trusted the light more than any chart, and the "
    "children believed the keeper never slept at all. In winter the supply boat could not land for "
    "weeks, so he kept a cellar of potatoes, salted fish and lamp oil. When the automatic beacon was "
    "finally installed, he stayed on as a guide, telling visitors about the wrecks, the rescues and "
    "the long quiet nights spent alone with the sea and the turning beam."
)

# The kind of ingest report each file of `make_mixed_corpus` must produce.
MIXED_FAILED = {
    "corpus/broken.pdf": "corrupt PDF",
    "corpus/binary.txt": "binary file",
    "corpus/empty.md": "empty file",
    "corpus/latin1.txt": "not UTF-8",
}


def ingest_in(twin, *paths, **kwargs):
    """Ingest paths relative to the project root (as a user in that folder would)."""
    cwd = os.getcwd()
    os.chdir(twin.project.root)
    try:
        return twin.ingest(list(paths), **kwargs)
    finally:
        os.chdir(cwd)


def _mixed_corpus(root):
    """Write the mixed corpus of the ingest/search tests under `root` (created); return `root`.

    Good: guide.md (headings), notes.txt, page.html (script and nav to drop), report.pdf,
    records.jsonl (3 records with ids and metadata, one malformed line: line 3), essay.md.
    Bad: broken.pdf, binary.txt, empty.md, latin1.txt. Skipped: logo.png. Duplicates:
    guide_copy.md (exact, other whitespace and case) and essay_v2.md (near, 3 words changed).
    """
    import json
    from pathlib import Path

    from test_load import make_pdf

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    guide = (
        "# Quokka Field Guide\n\n"
        "Quokkas are small marsupials that live on Rottnest Island near Perth.\n\n"
        "## Diet\n\n"
        "They graze at night on grasses, sedges and the leaves of shrubs, and can go without water for long periods.\n\n"
        "## Behaviour\n\n"
        "Quokkas are famous for their smiling faces and show little fear of the many tourists who visit the island.\n"
    )
    (root / "guide.md").write_text(guide, encoding="utf-8")
    copy = guide.upper().replace("\n\n", "\n\n\n").replace(" ", "   ")
    (root / "guide_copy.md").write_text(copy, encoding="utf-8")
    (root / "notes.txt").write_text(
        "Sourdough starter notes.\n\nFeed the starter with equal weights of rye flour and water every "
        "twelve hours; it is ready to bake with when it doubles within six hours.\n",
        encoding="utf-8",
    )
    (root / "page.html").write_text(
        "<!doctype html><html><head><title>Tea Ceremony</title>"
        "<script>var tracker = 'XSCRIPTX analytics';</script></head><body>"
        "<nav><a href='/'>NAVLINKS home</a> <a href='/about'>NAVLINKS about</a></nav>"
        "<main><h1>The Japanese Tea Ceremony</h1>"
        "<p>The tea ceremony, called chanoyu, is the ritual preparation of powdered green tea named matcha.</p>"
        "<script>document.write('XSCRIPTX inline')</script>"
        "<p>A host whisks the matcha in a bowl and serves it to guests in a quiet tatami room.</p></main>"
        "</body></html>",
        encoding="utf-8",
    )
    (root / "report.pdf").write_bytes(
        make_pdf(["Glacier Retreat Report", "The Aletsch glacier lost three kilometres of length since 1870."])
    )
    (root / "broken.pdf").write_bytes(make_pdf(["This file is cut short."])[:150])
    (root / "binary.txt").write_bytes(b"\x00\x01\x02\x03 ELF binary \x00\xff\xfe" * 20)
    (root / "empty.md").write_bytes(b"")
    (root / "latin1.txt").write_bytes("Caf\u00e9 cr\u00e8me br\u00fbl\u00e9e recipe notes.".encode("latin-1"))
    (root / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    records = [
        {"id": "rec-alpha", "text": "Project Alpha migrates the billing service to PostgreSQL sixteen.",
         "metadata": {"team": "red", "year": 2023}},
        {"id": "rec-beta", "text": "Project Beta replaces the mobile login screen with passkeys.",
         "metadata": {"team": "blue", "year": 2024}},
    ]
    lines = [json.dumps(r) for r in records]
    lines.append('{"id": "rec-bad", "text": "this line is cut')  # line 3: malformed
    lines.append(json.dumps({"id": "rec-gamma", "text": "Project Gamma archives old invoices to cold storage on tape.",
                             "metadata": {"team": "red", "year": 2024}}))
    (root / "records.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "essay.md").write_text(ESSAY + "\n", encoding="utf-8")
    words = ESSAY.split(" ")
    assert words[0] == "The" and words[-1] == "beam." and words[86] == "trusted"
    words[0], words[86], words[-1] = "A", "relied on", "light."
    (root / "essay_v2.md").write_text(" ".join(words) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def make_mixed_corpus():
    """A function writing the mixed corpus (see `_mixed_corpus`) under a directory."""
    return _mixed_corpus


def _bulk_corpus(root, n: int):
    """`n` small, distinct (no near-duplicates) markdown files of two short paragraphs each."""
    import random
    from pathlib import Path

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(n)
    vocab = (
        "river mountain copper violin harbour lantern orchard falcon quartz meadow ember glacier "
        "saffron compass thistle beacon canyon velvet marble cedar tundra pepper anchor willow "
        "cobalt prairie lagoon juniper granite harvest comet walnut sparrow citadel nectar "
        "monsoon basalt tulip ferry ivory jasmine kestrel lilac magnet nutmeg opal pylon quill"
    ).split()
    for i in range(n):
        paras = [" ".join(rng.choice(vocab) for _ in range(40)) + "." for _ in range(2)]
        (root / f"note{i:03d}.md").write_text(f"# Note {i}\n\n" + "\n\n".join(paras) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def make_bulk_corpus():
    """A function writing `n` distinct small markdown files under a directory."""
    return _bulk_corpus


def _run_twin(*args, cwd=None, timeout: float = 300, check: bool = False):
    """Run the real `twin` console script of this venv; returns the CompletedProcess (text)."""
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "COLUMNS": "200"}
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "twin"), *map(str, args)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"twin {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def twin_cli():
    """A function running the `twin` console script as a subprocess: twin_cli(*args, cwd=..., check=...)."""
    return _run_twin


@pytest.fixture(scope="session")
def smollm2_dir():
    """The packaged SmolLM2 as a float32 Hugging Face dir (dequantised once, cached): a training base."""
    from llmtwin.training.base_model import base_model_dir

    return base_model_dir("packaged")
