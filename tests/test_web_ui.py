"""The web UI in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright), against the
real `twin serve` command on 127.0.0.1: ask, watch the streamed answer, open a citation, upload a
file and find it. Screenshots go to $LLMTWIN_SCREENSHOTS (default: the test's tmp dir)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.model,  # `twin serve` with the packaged models
    pytest.mark.skipif(
        not Path(CHROMIUM).exists() or shutil.which("chromium") is None,
        reason="Debian's chromium is not installed (`make test` installs it as root)",
    ),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

# Chromium on a machine with no network: no background connections, no first-run, no sandbox (root).
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic", "--disable-dev-shm-usage",
]


DOCS = {
    "quokka.md": "# Quokka Field Guide\n\nQuokkas are small marsupials that live on Rottnest Island near Perth.\n\n"
    "## Diet\n\nQuokkas graze at night on grasses, sedges and the leaves of shrubs.\n",
    "tea.md": "# Tea Ceremony\n\nThe tea ceremony, called chanoyu, is the ritual preparation of powdered green tea "
    "named matcha.\n",
}


@pytest.fixture(scope="module")
def served(tmp_path_factory, twin_cli):
    """`twin serve --no-auth --port 0` on a new project, its documents uploaded through the API."""
    root = tmp_path_factory.mktemp("webui")
    twin_cli("init", root, check=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "twin"), "--project", str(root), "--set", "llm.max_new_tokens=32",
         "serve", "--port", "0", "--no-auth"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    url = None
    deadline = time.time() + 180
    lines = []
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if m := re.search(r"ready on (http://127\.0\.0\.1:\d+)/", line):
            url = m.group(1)
            break
    if url is None:
        proc.kill()
        raise RuntimeError("twin serve did not start:\n" + "".join(lines))
    try:
        files = [("files", (f"docs/{name}", text.encode(), "text/markdown")) for name, text in DOCS.items()]
        job = httpx.post(url + "/v1/ingest", files=files, timeout=60).json()
        while job["status"] in ("queued", "running"):
            time.sleep(0.2)
            job = httpx.get(f"{url}/v1/ingest/{job['id']}", timeout=60).json()
        assert job["status"] == "done", job
        yield url, root
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def page(served, tmp_path_factory):
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),  # a fresh, empty profile
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 860},
        )
        page = context.new_page()
        page.set_default_timeout(60_000)
        yield page
        context.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    folder = Path(os.environ.get("LLMTWIN_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_ask_stream_and_open_a_citation(served, page, shots):
    url, _ = served
    page.goto(url + "/")
    page.wait_for_selector("body[data-ready='1']")
    options = page.locator("#model option").all_text_contents()
    assert options[0].startswith("twin-rag") and len(options) == 2  # the RAG model first, then the LLM
    assert "2 documents" in page.locator("#status").text_content()

    # record every text the answer shows while it streams
    page.evaluate("""() => {
        window.__seen = [];
        new MutationObserver(() => {
            const el = document.querySelector('.msg.assistant');
            if (el && el.classList.contains('streaming')) window.__seen.push(el.textContent);
        }).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
    }""")
    page.fill("#question", "What do quokkas graze on at night?")
    page.press("#question", "Enter")
    page.wait_for_selector(".msg.user")
    page.wait_for_selector(".msg.assistant:not(.streaming) .meta")
    answer = page.locator(".msg.assistant").first
    seen = [s for s in page.evaluate("window.__seen") if s]
    assert seen, "the answer showed text while it was still streaming"
    assert "Error" not in answer.text_content()
    cites = answer.locator("button.cite")
    assert cites.count() >= 1, answer.text_content()
    sources = page.locator("#sources li")
    assert sources.count() >= 1 and page.locator("#sources li.cited").count() >= 1
    assert "uploads/docs/quokka.md" in sources.first.text_content()

    cites.first.click()
    view = page.locator("#chunkview")
    view.wait_for(state="visible")
    page.wait_for_function("document.getElementById('chunk-path').textContent.includes('chunk')")  # fetched
    assert "quokka.md" in page.locator("#chunk-path").text_content()
    assert "Quokkas" in page.locator("#chunk-text").text_content()
    assert page.locator("#sources li.active").count() == 1
    page.screenshot(path=str(shots / "webui-answer.png"))


def test_upload_then_find_it(served, page, shots, tmp_path):
    url, root = served
    note = tmp_path / "zeppelin.md"
    note.write_text("# Zeppelin Notes\n\nThe Graf Zeppelin airship circled the globe in 1929 in twenty-one days.\n",
                    encoding="utf-8")
    page.set_input_files("#files", str(note))
    page.click("#upload")
    job = page.locator("#jobs li").first
    job.wait_for(state="attached")
    page.wait_for_selector("#jobs li[data-status='done']", timeout=120_000)
    assert "1 added" in job.text_content(), job.text_content()
    assert (root / "uploads" / "zeppelin.md").is_file()
    page.wait_for_function("document.getElementById('status').textContent.includes('3 documents')")

    page.fill("#search", "airship that circled the globe")
    page.press("#search", "Enter")
    page.wait_for_selector("#sources[data-query='airship that circled the globe'] li")
    assert "uploads/zeppelin.md" in page.locator("#sources li").first.text_content()
    page.locator("#sources li").first.click()
    page.wait_for_function("document.getElementById('chunk-text').textContent.includes('Graf Zeppelin')")
    page.screenshot(path=str(shots / "webui-upload-search.png"))


def test_plain_model_from_the_picker(served, page):
    page.select_option("#model", index=1)
    page.fill("#question", "Say hello.")
    page.press("#question", "Enter")
    page.wait_for_function(
        "document.querySelectorAll('.msg.assistant').length === 2 && "
        "!document.querySelectorAll('.msg.assistant')[1].classList.contains('streaming')"
    )
    reply = page.locator(".msg.assistant").nth(1)
    assert reply.text_content().strip() and "Error" not in reply.text_content()
    assert reply.locator("button.cite").count() == 0


def test_the_ui_needs_no_network(served):
    """Every asset the page loads comes from the server itself (no CDN)."""
    url, _ = served
    html = httpx.get(url + "/").text
    assert not re.search(r"(src|href)=\"https?://", html)
    for asset in ("/static/app.js", "/static/style.css"):
        text = httpx.get(url + asset).text
        assert "http://" not in text and "https://" not in text
