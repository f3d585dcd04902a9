"""Load benchmark of `twin serve` on loopback: concurrent /v1/search, concurrent streaming chats,
both at once, and the time to first streamed token of a lone chat.

    .venv/bin/python bench/serve_load.py --project /tmp/llmtwin-serve-bench --build
    .venv/bin/python bench/serve_load.py --project DIR [--clients 20 --searches 500 --chats 20]

`--build` makes the benchmark project once: the xsum articles and disfl_qa passages from
../shared/data (evaluation data: read to measure, never copied into the repository) ingested
with 64-token chunks, which gives over 10,000 chunks. The server runs as its own process
(`twin serve`, API keys on, 127.0.0.1, a free port); this process is only the clients. Every
loop is bounded in count and time. Results: bench/results/serve_load.json and a markdown table
on stdout (copied into docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
TWIN = str(Path(sys.executable).parent / "twin")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
DEADLINE_S = 900  # the whole run stops by then, whatever happens


def build(project: Path, xsum_docs: int | None = None) -> None:
    corpus = project / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    with open(corpus / "xsum.jsonl", "w", encoding="utf-8") as out:
        for i, line in enumerate(open(DATA / "xsum.jsonl", encoding="utf-8")):
            if xsum_docs is not None and i == xsum_docs:
                break
            r = json.loads(line)
            out.write(json.dumps({"id": r["id"], "text": r["document"]}) + "\n")
    with open(corpus / "disfl.jsonl", "w", encoding="utf-8") as out:
        for line in open(DATA / "disfl_qa_corpus.jsonl", encoding="utf-8"):
            r = json.loads(line)
            out.write(json.dumps({"id": r["id"], "text": r["text"]}) + "\n")
    subprocess.run([TWIN, "init", str(project)], check=True, env=ENV)
    t = time.perf_counter()
    subprocess.run([TWIN, "--project", str(project), "ingest", str(corpus), "--chunk-tokens", "64",
                    "--chunk-overlap", "8"], check=True, env=ENV)
    print(f"built {project} in {time.perf_counter() - t:.0f} s", file=sys.stderr)


def queries(n: int) -> list[str]:
    out = []
    for line in open(DATA / "disfl_qa_queries.jsonl", encoding="utf-8"):
        out.append(json.loads(line)["question"])
        if len(out) == n:
            break
    return out


class Server:
    def __init__(self, project: Path, chat_tokens: int, queue_size: int):
        from llmtwin.serve.keys import KeyStore

        self.keys = KeyStore(project / ".twin" / "keys.json")
        record, self.key = self.keys.create("bench")
        self.key_id = record.id
        self.proc = subprocess.Popen(
            [TWIN, "--project", str(project), "--set", f"llm.max_new_tokens={chat_tokens}",
             "--set", f"serve.queue_size={queue_size}", "serve", "--port", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV,
        )
        deadline = time.time() + 300
        self.url = None
        lines = []
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if m := re.search(r"ready on (http://127\.0\.0\.1:\d+)/", line):
                self.url = m.group(1)
                break
        if self.url is None:
            self.stop()
            raise SystemExit("twin serve did not start:\n" + "".join(lines))

    def cpu_seconds(self) -> float:
        """The server process's CPU time so far (user + system, all its threads)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.keys.revoke(self.key_id)


def summary(latencies: list[float], wall: float, statuses: list, name: str) -> dict:
    ok = [s for s in statuses if s == 200]
    lat = sorted(latencies)

    def pct(p: float) -> float:
        return round(1000 * lat[min(len(lat) - 1, int(round(p / 100 * (len(lat) - 1))))], 1) if lat else float("nan")

    return {
        "name": name,
        "requests": len(statuses),
        "ok": len(ok),
        "errors": len(statuses) - len(ok),
        "5xx": sum(1 for s in statuses if isinstance(s, int) and s >= 500),
        "lost": sum(1 for s in statuses if not isinstance(s, int)),
        "p50_ms": pct(50),
        "p95_ms": pct(95),
        "p99_ms": pct(99),
        "max_ms": round(1000 * lat[-1], 1) if lat else None,
        "wall_s": round(wall, 2),
        "throughput_rps": round(len(ok) / wall, 1) if wall else None,
    }


async def search_load(client: httpx.AsyncClient, qs: list[str], clients: int) -> tuple[list[float], list]:
    todo = list(enumerate(qs))
    latencies: list[float] = []
    statuses: list = []

    async def worker():
        while todo:
            _, q = todo.pop()
            t = time.perf_counter()
            try:
                resp = await client.post("/v1/search", json={"query": q, "k": 10})
                statuses.append(resp.status_code)
            except httpx.HTTPError as e:
                statuses.append(type(e).__name__)
            latencies.append(time.perf_counter() - t)

    await asyncio.gather(*(worker() for _ in range(clients)))
    return latencies, statuses


async def raw_search_load(url: str, key: str, qs: list[str], clients: int) -> tuple[list[float], list]:
    """search_load on a lean client: one keep-alive HTTP/1.1 connection per client, the request
    written and the response read by hand (about a tenth of httpx's CPU per request). On 2 cores
    the clients share the CPU with the server, so this measures more of the server and less of
    the load generator (wrk and hey are lean for the same reason)."""
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    todo = list(enumerate(qs))
    latencies: list[float] = []
    statuses: list = []

    async def worker():
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while todo:
                _, q = todo.pop()
                body = json.dumps({"query": q, "k": 10}).encode()
                head = (f"POST /v1/search HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {key}\r\n"
                        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
                t = time.perf_counter()
                try:
                    writer.write(head.encode() + body)
                    await writer.drain()
                    status = int((await reader.readline()).split()[1])
                    length = None
                    while (line := await reader.readline()) not in (b"\r\n", b""):
                        name, _, value = line.partition(b":")
                        if name.strip().lower() == b"content-length":
                            length = int(value)
                    if length is None:
                        raise ValueError("no Content-Length")
                    await reader.readexactly(length)
                    statuses.append(status)
                except (OSError, ValueError, IndexError, asyncio.IncompleteReadError) as e:
                    statuses.append(type(e).__name__)
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, int(port))
                latencies.append(time.perf_counter() - t)
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(clients)))
    return latencies, statuses


async def paced_search_load(client: httpx.AsyncClient, qs: list[str], clients: int, rate: float) -> tuple[list[float], list]:
    """Open loop: requests start at `rate` per second in all (a fixed schedule), from `clients`
    connections; a request whose start time has come waits only for a free connection. This is a
    population of users who do not all hammer the server at once, unlike the closed loop above."""
    start = time.perf_counter()
    todo = list(enumerate(qs))
    latencies: list[float] = []
    statuses: list = []

    async def worker():
        while todo:
            i, q = todo.pop(0)
            due = start + i / rate
            now = time.perf_counter()
            if due > now:
                await asyncio.sleep(due - now)
            t = due  # a late start (every connection busy) counts as waiting
            try:
                resp = await client.post("/v1/search", json={"query": q, "k": 10})
                statuses.append(resp.status_code)
            except httpx.HTTPError as e:
                statuses.append(type(e).__name__)
            latencies.append(time.perf_counter() - t)  # from the scheduled start: queueing counts

    await asyncio.gather(*(worker() for _ in range(clients)))
    return latencies, statuses


async def one_chat(client: httpx.AsyncClient, question: str, tokens: int, model: str = "twin-rag") -> dict:
    body = {"model": model, "stream": True, "max_tokens": tokens,
            "messages": [{"role": "user", "content": question}]}
    t = time.perf_counter()
    first = None
    final = None
    done = False
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
            if resp.status_code != 200:
                await resp.aread()
                return {"status": resp.status_code, "total": time.perf_counter() - t}
            async for line in resp.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    done = True
                    break
                event = json.loads(data)
                if "error" in event:
                    return {"status": "stream-error", "total": time.perf_counter() - t}
                choice = event["choices"][0] if event.get("choices") else None
                if choice and choice["delta"].get("content") and first is None:
                    first = time.perf_counter() - t
                if choice and choice.get("finish_reason"):
                    final = event
    except httpx.HTTPError as e:
        return {"status": type(e).__name__, "total": time.perf_counter() - t}
    timings = (final or {}).get("timings", {})
    return {
        "status": 200 if done else "no-DONE",
        "ttft": first if first is not None else time.perf_counter() - t,
        "total": time.perf_counter() - t,
        "search": timings.get("search"),
        "server_total": timings.get("total"),
    }


async def chat_load(client: httpx.AsyncClient, qs: list[str], tokens: int) -> list[dict]:
    return await asyncio.gather(*(one_chat(client, q, tokens) for q in qs))


def chat_summary(results: list[dict], wall: float, name: str) -> dict:
    s = summary([r["total"] for r in results], wall, [r["status"] for r in results], name)
    ttft = sorted(r["ttft"] for r in results if "ttft" in r)
    if ttft:
        s["ttft_p50_ms"] = round(1000 * statistics.median(ttft), 1)
        s["ttft_p95_ms"] = round(1000 * ttft[min(len(ttft) - 1, int(round(0.95 * (len(ttft) - 1))))], 1)
        s["ttft_max_ms"] = round(1000 * ttft[-1], 1)
    return s


async def run(args) -> dict:
    server = Server(args.project, args.chat_tokens, queue_size=max(32, args.chats))
    started = time.time()
    try:
        headers = {"Authorization": f"Bearer {server.key}"}
        limits = httpx.Limits(max_connections=args.clients + args.chats + 4, max_keepalive_connections=args.clients + args.chats + 4)
        async with httpx.AsyncClient(base_url=server.url, headers=headers, limits=limits, timeout=120) as client:
            status = (await client.get("/v1/status")).json()
            qs = queries(args.searches + args.chats + 40)
            search_qs, chat_qs, warm_qs = qs[: args.searches], qs[args.searches: args.searches + args.chats], qs[-40:]
            await search_load(client, warm_qs[:20], 4)  # warm-up, not counted
            out = {"chunks": status["chunks"], "documents": status["documents"], "cores": os.cpu_count(),
                   "clients": args.clients, "searches": args.searches, "chats": args.chats,
                   "chat_max_tokens": args.chat_tokens, "date": time.strftime("%Y-%m-%d %H:%M"),
                   "loadavg_1m_before": round(os.getloadavg()[0], 2), "phases": []}

            async def measured(load, name: str) -> None:  # latencies, plus server and client CPU per request
                t, server_cpu, client_cpu = time.perf_counter(), server.cpu_seconds(), time.process_time()
                lat, st = await load
                s = summary(lat, time.perf_counter() - t, st, name)
                s["server_cpu_ms_per_request"] = round(1000 * (server.cpu_seconds() - server_cpu) / len(st), 2)
                s["client_cpu_ms_per_request"] = round(1000 * (time.process_time() - client_cpu) / len(st), 2)
                out["phases"].append(s)

            for clients in sorted({1, 4, args.clients}):
                n = len(search_qs) if clients == args.clients else min(200, len(search_qs))
                await measured(search_load(client, search_qs[:n], clients), f"search, {clients} client(s)")
            if args.raw_client:
                await measured(raw_search_load(server.url, server.key, search_qs, args.clients),
                               f"search, {args.clients} clients, lean client")

            for rate in args.rates:
                await measured(paced_search_load(client, search_qs, args.clients, rate),
                               f"search, {args.clients} clients, offered {rate:g} req/s")
            if args.search_only:
                out["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
                return out
            # a lone chat, several times: time to first token against its retrieval time
            lone = []
            for q in warm_qs[20:20 + args.lone]:
                lone.append(await one_chat(client, q, args.chat_tokens))
            s = chat_summary(lone, sum(r["total"] for r in lone), "lone streaming chat (sequential)")
            gaps = [r["ttft"] - r["search"] for r in lone if r.get("search") is not None and "ttft" in r]
            s["retrieval_p50_ms"] = round(1000 * statistics.median(r["search"] for r in lone if r.get("search") is not None), 1)
            s["ttft_minus_retrieval_max_ms"] = round(1000 * max(gaps), 1) if gaps else None
            out["phases"].append(s)
            models = (await client.get("/v1/models")).json()["data"]
            llm_id = next(m["id"] for m in models if m["kind"] == "llm")
            plain = [await one_chat(client, q, args.chat_tokens, llm_id) for q in warm_qs[20:20 + args.lone]]
            out["phases"].append(chat_summary(plain, sum(r["total"] for r in plain),
                                              f"lone streaming chat, {llm_id} without retrieval"))

            t = time.perf_counter()
            chats = await chat_load(client, chat_qs, args.chat_tokens)
            out["phases"].append(chat_summary(chats, time.perf_counter() - t, f"{args.chats} concurrent streaming chats"))

            if time.time() - started < DEADLINE_S - 300:
                async def timed(coro):
                    t = time.perf_counter()
                    result = await coro
                    return result, time.perf_counter() - t

                (chats, chat_wall), ((lat, st), search_wall) = await asyncio.gather(
                    timed(chat_load(client, chat_qs, args.chat_tokens)),
                    timed(search_load(client, search_qs, args.clients)),
                )
                out["phases"].append(chat_summary(chats, chat_wall, f"mixed: {args.chats} streaming chats"))
                out["phases"].append(summary(lat, search_wall, st, f"mixed: search, {args.clients} clients"))
            out["health"] = (await client.get("/healthz")).json()
            out["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
            return out
    finally:
        server.stop()


def machine_speed(project: Path) -> float:
    """Median ms to embed one question with the project's query encoder, in this process while
    nothing else runs: how fast the machine is right now. The same code's server CPU per search
    moved from 5.3 to 9.2 ms within an hour on this VM, with this number (2.3 → 4.1 ms)."""
    from llmtwin import Twin

    embedder = Twin(project).embedder
    qs = queries(240)
    for q in qs[:40]:
        embedder.embed_query(q)
    times = []
    for q in qs[40:]:
        t = time.perf_counter()
        embedder.embed_query(q)
        times.append(time.perf_counter() - t)
    return round(1000 * statistics.median(times), 2)


def markdown(result: dict) -> str:
    rows = ["| phase | requests | errors | 5xx | lost | p50 ms | p95 ms | max ms | req/s | TTFT p50 / p95 ms "
            "| CPU ms per request: server / client |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in result["phases"]:
        ttft = f"{p['ttft_p50_ms']} / {p['ttft_p95_ms']}" if "ttft_p50_ms" in p else ""
        cpu = f"{p['server_cpu_ms_per_request']} / {p['client_cpu_ms_per_request']}" if "server_cpu_ms_per_request" in p else ""
        rows.append(f"| {p['name']} | {p['requests']} | {p['errors']} | {p['5xx']} | {p['lost']} | {p['p50_ms']} | "
                    f"{p['p95_ms']} | {p['max_ms']} | {p['throughput_rps']} | {ttft} | {cpu} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--project", type=Path, default=Path("/tmp/llmtwin-serve-bench"))
    ap.add_argument("--build", action="store_true", help="make the benchmark project first (minutes)")
    ap.add_argument("--xsum-docs", type=int, default=None,
                    help="with --build: only the first N xsum articles (all: 14,324 chunks; 620: ~10,000)")
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--searches", type=int, default=500)
    ap.add_argument("--chats", type=int, default=20)
    ap.add_argument("--lone", type=int, default=5, help="sequential chats for time to first token")
    ap.add_argument("--chat-tokens", type=int, default=32)
    ap.add_argument("--search-only", action="store_true", help="only the /v1/search phases")
    ap.add_argument("--rates", type=float, nargs="*", default=[20, 40, 60],
                    help="open-loop /v1/search phases at these offered rates (requests per second)")
    ap.add_argument("--raw-client", action="store_true",
                    help="also the closed-loop phase at --clients on a lean hand-written HTTP client")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "serve_load.json")
    args = ap.parse_args()
    if args.build:
        build(args.project, args.xsum_docs)
    if not (args.project / "twin.yaml").exists():
        raise SystemExit(f"{args.project}: no project; run with --build first")
    # The clients' own garbage collector must not pause them mid-request (a full collection of
    # this process took 10–35 ms during a run, counted as server latency): what is loaded by now
    # stays, the rest dies young.
    speed = machine_speed(args.project)
    gc.collect()
    gc.freeze()
    result = asyncio.run(asyncio.wait_for(run(args), DEADLINE_S))
    result["query_embedding_ms_before"] = speed
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    print(f"\nmachine speed before the run: {speed} ms to embed one question (in the client process)")
    lone = next((p for p in result["phases"] if p["name"].startswith("lone streaming chat (sequential)")), None)
    if lone is None:
        return
    print(f"\n{result['chunks']} chunks, {result['cores']} cores, load average {result['loadavg_1m_before']} → "
          f"{result['loadavg_1m_after']}; lone chat: retrieval p50 "
          f"{lone['retrieval_p50_ms']} ms, TTFT − retrieval max {lone['ttft_minus_retrieval_max_ms']} ms")


if __name__ == "__main__":
    main()
