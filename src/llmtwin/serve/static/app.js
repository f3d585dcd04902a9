// llmtwin web UI: plain JS, no build step. Chat streams through fetch + ReadableStream and
// parses the server-sent events itself; [n] markers become buttons that open the cited chunk.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  key: localStorage.getItem("llmtwin.key") || "",
  models: [],
  ragModel: null,
  history: [],      // the conversation for plain (non-RAG) models
  controller: null, // aborts the running chat stream
};

// ------------------------------------------------------------------ HTTP

function headers(extra = {}) {
  const h = { ...extra };
  if (state.key) h["Authorization"] = "Bearer " + state.key;
  return h;
}

async function errorMessage(resp) {
  try {
    const body = await resp.json();
    if (body && body.error && body.error.message) return body.error.message;
  } catch (_) { /* not JSON */ }
  return resp.status + " " + resp.statusText;
}

async function api(path, options = {}) {
  const resp = await fetch(path, { ...options, headers: headers(options.headers || {}) });
  if (resp.status === 401) {
    $("keybox").open = true;
    setStatus("This server needs an API key: paste one under “API key”.", true);
  }
  if (!resp.ok) throw new Error(await errorMessage(resp));
  return resp.json();
}

function setStatus(text, bad = false) {
  const el = $("status");
  el.textContent = text;
  el.style.color = bad ? "var(--bad)" : "";
}

// ------------------------------------------------------------------ models and status

async function loadModels() {
  const body = await api("/v1/models");
  state.models = body.data.filter((m) => m.kind !== "embedding");
  const rag = state.models.find((m) => m.kind === "rag");
  state.ragModel = rag ? rag.id : null;
  const select = $("model");
  select.replaceChildren();
  for (const m of state.models) {
    const opt = document.createElement("option");
    opt.value = m.id;
    opt.textContent = m.kind === "rag" ? `${m.id} (documents + citations)` : `${m.id} (no retrieval)`;
    select.append(opt);
  }
  if (state.ragModel) select.value = state.ragModel;
}

async function loadStatus() {
  try {
    const s = await api("/v1/status");
    setStatus(`${s.documents} documents · ${s.chunks} chunks`);
  } catch (e) {
    if (!/API key/.test($("status").textContent)) setStatus(e.message, true);
  }
}

// ------------------------------------------------------------------ rendering

function addMessage(role, text) {
  $("hint")?.remove();
  const el = document.createElement("div");
  el.className = "msg " + role;
  el.textContent = text;
  $("messages").append(el);
  el.scrollIntoView({ block: "end" });
  return el;
}

// The answer's text with each [n] (or [n, m]) marker as a button opening source n.
function renderAnswer(el, text, sources) {
  el.replaceChildren();
  const byN = new Map((sources || []).map((s) => [s.n, s]));
  const re = /\[(\d+(?:\s*,\s*\d+)*)\]/g;
  let last = 0;
  for (const match of text.matchAll(re)) {
    el.append(document.createTextNode(text.slice(last, match.index)));
    for (const n of match[1].split(",").map((x) => parseInt(x, 10))) {
      const source = byN.get(n);
      if (!source) { el.append(document.createTextNode(`[${n}]`)); continue; }
      const b = document.createElement("button");
      b.type = "button";
      b.className = "cite";
      b.dataset.n = String(n);
      b.title = source.source;
      b.textContent = `[${n}]`;
      b.addEventListener("click", () => openSource(source));
      el.append(b);
    }
    last = match.index + match[0].length;
  }
  el.append(document.createTextNode(text.slice(last)));
}

function label(s) {
  const path = s.heading_path && s.heading_path.length ? " › " + s.heading_path.join(" › ") : "";
  return s.source + path;
}

function showSources(items, citedIds = new Set(), query = "") {
  const list = $("sources");
  list.replaceChildren();
  list.dataset.query = query; // what these results answer ("" for an answer's sources)
  $("sources-empty").hidden = items.length > 0;
  for (const s of items) {
    const li = document.createElement("li");
    li.dataset.chunkId = s.chunk_id;
    if (citedIds.has(s.chunk_id)) li.classList.add("cited");
    const head = document.createElement("div");
    head.className = "src";
    head.textContent = `${s.n ? "[" + s.n + "] " : (s.rank ? s.rank + ". " : "")}${label(s)}`;
    const snippet = document.createElement("div");
    snippet.className = "snippet";
    snippet.textContent = s.text;
    li.append(head, snippet);
    li.addEventListener("click", () => openSource(s));
    list.append(li);
  }
}

// Open a chunk: fetch it from the store (what the citation really points at) and show it.
async function openSource(s) {
  for (const li of $("sources").children) li.classList.toggle("active", li.dataset.chunkId === s.chunk_id);
  $("chunkview").hidden = false;
  $("chunk-title").textContent = s.n ? `Source [${s.n}]` : "Source";
  $("chunk-path").textContent = label(s);
  $("chunk-text").textContent = s.text;
  $("chunkview").scrollIntoView({ block: "nearest" });
  try {
    const chunk = await api("/v1/chunks/" + encodeURIComponent(s.chunk_id));
    $("chunk-text").textContent = chunk.text;
    $("chunk-path").textContent = label(chunk) + ` · chunk ${chunk.index + 1}`;
  } catch (_) { /* keep what the answer carried */ }
}

// ------------------------------------------------------------------ chat (streaming)

// Parse a server-sent event stream: calls onEvent(parsed JSON) per `data:` line, until [DONE].
async function readEvents(resp, onEvent) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
      const data = block.split(/\r?\n/).filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      if (!data) continue; // a comment (": queued …") or an empty event
      if (data === "[DONE]") return;
      onEvent(JSON.parse(data));
    }
  }
}

async function ask(question) {
  const model = $("model").value;
  const rag = model === state.ragModel;
  addMessage("user", question);
  const el = addMessage("assistant", "");
  el.classList.add("streaming");
  let text = "";
  let final = null;
  const messages = rag ? [{ role: "user", content: question }] : [...state.history, { role: "user", content: question }];
  state.controller = new AbortController();
  $("send").disabled = true;
  $("stop").hidden = false;
  if (rag) { showSources([]); $("sources-empty").textContent = "Searching…"; }
  try {
    const resp = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: headers({ "Content-Type": "application/json" }),
      body: JSON.stringify({ model, messages, stream: true }),
      signal: state.controller.signal,
    });
    if (!resp.ok) {
      if (resp.status === 401) $("keybox").open = true;
      throw new Error(await errorMessage(resp));
    }
    await readEvents(resp, (event) => {
      if (event.error) throw new Error(event.error.message);
      const choice = event.choices && event.choices[0];
      if (choice && choice.delta && choice.delta.content) {
        text += choice.delta.content;
        el.textContent = text;
        el.scrollIntoView({ block: "end" });
      }
      if (choice && choice.finish_reason) final = event;
    });
    el.classList.remove("streaming");
    if (final && final.sources) {
      const cited = new Set((final.citations || []).map((c) => c.chunk_id));
      renderAnswer(el, text.trim(), final.sources);
      showSources(final.sources, cited);
      const meta = document.createElement("span");
      meta.className = "meta";
      meta.textContent = final.citations && final.citations.length
        ? `${final.citations.length} cited of ${final.sources.length} sources`
        : (final.abstained ? "no answer in the documents" : `${final.sources.length} sources`);
      el.append(meta);
    } else {
      state.history.push({ role: "user", content: question }, { role: "assistant", content: text });
    }
  } catch (e) {
    el.classList.remove("streaming");
    if (e.name === "AbortError") {
      el.append(document.createTextNode(" [stopped]"));
    } else {
      el.classList.add("error");
      el.textContent = (text ? text + "\n" : "") + "Error: " + e.message;
    }
  } finally {
    $("sources-empty").textContent = "The sources of an answer, or search results, show here.";
    $("send").disabled = false;
    $("stop").hidden = true;
    state.controller = null;
  }
}

// ------------------------------------------------------------------ search

async function search(query) {
  $("sources-empty").textContent = "Searching…";
  try {
    const body = await api("/v1/search", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ query }),
    });
    showSources(body.data, new Set(), query);
    if (!body.data.length) $("sources-empty").textContent = "No results.";
  } catch (e) {
    showSources([]);
    $("sources-empty").textContent = "Error: " + e.message;
  }
}

// ------------------------------------------------------------------ upload and ingest progress

async function upload(files) {
  const form = new FormData();
  for (const f of files) form.append("files", f, f.name);
  const li = document.createElement("li");
  li.textContent = `Uploading ${files.length} file(s)…`;
  $("jobs").prepend(li);
  try {
    const job = await api("/v1/ingest", { method: "POST", body: form });
    await followJob(job, li);
  } catch (e) {
    li.className = "failed";
    li.textContent = "Upload failed: " + e.message;
  }
}

async function followJob(job, li) {
  const name = document.createElement("div");
  name.textContent = job.files.join(", ");
  const bar = document.createElement("progress");
  const note = document.createElement("div");
  note.className = "muted";
  li.replaceChildren(name, bar, note);
  li.dataset.jobId = job.id;
  for (;;) {
    const { done, total } = job.progress;
    if (total) { bar.max = total; bar.value = done; }
    note.textContent = job.status === "running" && total ? `embedding ${done}/${total} chunks` : job.status;
    if (job.status === "done" || job.status === "failed") break;
    await new Promise((r) => setTimeout(r, 400));
    job = await api("/v1/ingest/" + encodeURIComponent(job.id));
  }
  li.dataset.status = job.status;
  bar.max = 1; bar.value = 1;
  if (job.status === "failed") {
    li.classList.add("failed");
    note.textContent = "failed: " + job.error;
    return;
  }
  const r = job.report;
  const failed = r.failed.length ? `, ${r.failed.length} failed (${r.failed.map((f) => f.path + ": " + f.error).join("; ")})` : "";
  note.textContent = `done: ${r.added.length} added, ${r.updated.length} updated, ${r.unchanged.length} unchanged${failed}; ` +
    `${r.chunks} chunks, store version ${r.store_version}`;
  loadStatus();
}

// ------------------------------------------------------------------ wiring

function wire() {
  $("apikey").value = state.key;
  $("keyform").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.key = $("apikey").value.trim();
    localStorage.setItem("llmtwin.key", state.key);
    $("keybox").open = false;
    start();
  });
  $("ask").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const q = $("question").value.trim();
    if (!q || state.controller) return;
    $("question").value = "";
    ask(q);
  });
  $("question").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); $("ask").requestSubmit(); }
  });
  $("stop").addEventListener("click", () => state.controller && state.controller.abort());
  $("model").addEventListener("change", () => { state.history = []; });
  $("searchform").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const q = $("search").value.trim();
    if (q) search(q);
  });
  $("uploadform").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const files = [...$("files").files];
    if (files.length) { upload(files); $("files").value = ""; }
  });
  $("chunk-close").addEventListener("click", () => { $("chunkview").hidden = true; });
}

async function start() {
  try {
    await loadModels();
    await loadStatus();
    document.body.dataset.ready = "1";
  } catch (e) {
    if (!/API key/.test($("status").textContent)) setStatus(e.message, true);
  }
}

wire();
start();
