"""The HTML report of an evaluation run: one self-contained file (inline CSS and SVG, no script, no
network) with the metrics and their CIs, per-query score distributions, the rank of the first
relevant document, latency per search stage, and the worst examples with their retrieved context.
"""

from __future__ import annotations

from html import escape
from typing import Any

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1100px;color:#1d232b;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dde3ea;padding-bottom:4px}
.meta{color:#5a6572;font-size:13px}.meta code{background:#f1f4f7;padding:1px 4px;border-radius:3px}
table{border-collapse:collapse;font-size:13px}td,th{padding:3px 10px;text-align:right;border-bottom:1px solid #eef1f4}
th:first-child,td:first-child{text-align:left}th{background:#f6f8fa}
.grid{display:flex;flex-wrap:wrap;gap:12px}.card{border:1px solid #dde3ea;border-radius:6px;padding:8px;background:#fff}
.ex{border:1px solid #dde3ea;border-radius:6px;padding:10px 12px;margin:10px 0}
.ex .q{font-weight:600}.hit{margin:6px 0 0 0;padding:6px 8px;background:#f7f9fb;border-left:3px solid #c9d1da;font-size:13px}
.hit.rel{border-left-color:#2e9d5b;background:#eff9f2}.hit .h{color:#5a6572;font-size:12px}
.tag{display:inline-block;font-size:11px;padding:0 6px;border-radius:8px;background:#e8edf2;margin-left:6px}
.tag.rel{background:#cdeed8;color:#17603a}
"""


def _fmt(x: Any, digits: int = 4) -> str:
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) and x == x else "–"


def bar_chart(labels: list[str], values: list[float], title: str, *, width: int = 340, height: int = 190,
              color: str = "#3b7dd8", value_fmt: str = "{:.0f}", label_every: int | None = None) -> str:
    """A vertical bar chart as inline SVG."""
    left, bottom, top, right = 34, 34, 24, 8
    plot_w, plot_h = width - left - right, height - top - bottom
    vmax = max(values) if values and max(values) > 0 else 1.0
    n = max(len(values), 1)
    slot = plot_w / n
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" aria-label="{escape(title)}">',
        f'<text x="{width / 2:.1f}" y="15" text-anchor="middle" font-size="12" font-weight="600">{escape(title)}</text>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#8a96a3"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#8a96a3"/>',
        f'<text x="{left - 4}" y="{top + 4}" text-anchor="end" font-size="10" fill="#5a6572">{value_fmt.format(vmax)}</text>',
        f'<text x="{left - 4}" y="{top + plot_h}" text-anchor="end" font-size="10" fill="#5a6572">0</text>',
    ]
    label_every = label_every or max(1, round(n / 11))
    for i, (label, value) in enumerate(zip(labels, values)):
        h = plot_h * value / vmax
        x = left + i * slot + slot * 0.1
        parts.append(
            f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{slot * 0.8:.1f}" height="{h:.1f}" fill="{color}">'
            f"<title>{escape(label)}: {value_fmt.format(value)}</title></rect>"
        )
        if i % label_every == 0 or i == n - 1:
            parts.append(
                f'<text x="{x + slot * 0.4:.1f}" y="{top + plot_h + 13}" text-anchor="middle" font-size="10" fill="#5a6572">{escape(label)}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def hbar_chart(rows: list[tuple[str, float, float]], title: str, *, width: int = 700, unit: str = "ms") -> str:
    """Horizontal bars, two per row (p50 solid, p95 light), as inline SVG."""
    row_h, left, top, right = 26, 170, 28, 70
    height = top + row_h * max(len(rows), 1) + 22
    plot_w = width - left - right
    vmax = max((p95 for _, _, p95 in rows), default=1.0) or 1.0
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" aria-label="{escape(title)}">',
        f'<text x="{width / 2:.1f}" y="16" text-anchor="middle" font-size="12" font-weight="600">{escape(title)}</text>',
    ]
    for i, (name, p50, p95) in enumerate(rows):
        y = top + i * row_h
        parts += [
            f'<text x="{left - 6}" y="{y + 15}" text-anchor="end" font-size="11">{escape(name)}</text>',
            f'<rect x="{left}" y="{y + 3}" width="{plot_w * p95 / vmax:.1f}" height="16" fill="#b9d2f2"><title>p95 {p95:.2f} {unit}</title></rect>',
            f'<rect x="{left}" y="{y + 3}" width="{plot_w * p50 / vmax:.1f}" height="16" fill="#3b7dd8"><title>p50 {p50:.2f} {unit}</title></rect>',
            f'<text x="{left + plot_w * p95 / vmax + 4:.1f}" y="{y + 15}" font-size="10" fill="#5a6572">{p50:.2f} / {p95:.2f}</text>',
        ]
    y = top + row_h * len(rows) + 14
    parts.append(
        f'<text x="{left}" y="{y}" font-size="10" fill="#5a6572">■ p50 (dark) and p95 (light), {escape(unit)} per query</text></svg>'
    )
    return "".join(parts)


def histogram(values: list[float], bins: int = 10) -> tuple[list[str], list[float]]:
    """Counts of values in [0, 1] over equal bins (1.0 falls in the last bin)."""
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, max(0, int(v * bins)))] += 1
    labels = [f"{i / bins:.1f}" for i in range(bins)]  # a bin's lower edge
    return labels, [float(c) for c in counts]


def render_report(summary: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    ks = summary.get("ks", [10])
    max_k = max(ks)
    included = [r for r in rows if r.get("included", True)]
    title = f"Retrieval evaluation {summary['run_id']}"
    out = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        "<p class='meta'>"
        f"dataset <code>{escape(summary['dataset']['path'])}</code> ({summary['dataset']['questions']} questions, "
        f"{summary['dataset']['failed_lines']} unusable lines) · mode <code>{escape(str(summary['mode']))}</code> · "
        f"store version {summary.get('store_version')} · embedder <code>{escape(str(summary['models'].get('embedder')))}</code> · "
        f"config {escape(str(summary.get('config_hash')))} · {escape(summary.get('created', ''))}</p>",
        f"<p class='meta'>{summary['evaluated']} questions evaluated; {summary['no_relevant']} without a relevant "
        f"document left out; {summary['search_errors']} search errors (counted as empty runs). "
        f"{escape(summary.get('conventions', ''))}.</p>",
    ]
    # metrics table: one row per measure family, one column per k
    metrics = summary["metrics"]
    conf = next(iter(metrics.values()))["confidence"] if metrics else 0.95
    out.append(f"<h2>Metrics (mean and {conf:.0%} bootstrap CI)</h2><table><tr><th>measure</th>")
    out += [f"<th>@{k}</th>" for k in ks] + ["</tr>"]
    for fam in ("recall", "precision", "mrr", "ndcg"):
        out.append(f"<tr><td>{fam}</td>")
        for k in ks:
            m = metrics.get(f"{fam}@{k}")
            out.append(f"<td>{_fmt(m['value'])} <span class='meta'>[{_fmt(m['low'], 3)}, {_fmt(m['high'], 3)}]</span></td>" if m else "<td>–</td>")
        out.append("</tr>")
    out.append("</table><table style='margin-top:8px'>")
    for name in ("map", "mrr", "ndcg"):
        if name in metrics:
            m = metrics[name]
            out.append(f"<tr><td>{name} (whole run)</td><td>{_fmt(m['value'])} <span class='meta'>[{_fmt(m['low'], 3)}, {_fmt(m['high'], 3)}]</span></td></tr>")
    out.append("</table>")

    # distributions
    out.append("<h2>Score distributions (questions per bin; a bin is labelled by its lower edge)</h2><div class='grid'>")
    for name in (f"ndcg@{max_k}", f"recall@{max_k}", f"mrr@{max_k}", "map"):
        values = [r["metrics"][name] for r in included if name in r["metrics"]]
        if values:
            labels, counts = histogram(values)
            out.append(f"<div class='card'>{bar_chart(labels, counts, name)}</div>")
    ranks = summary.get("first_relevant_rank", {})
    if ranks:
        out.append(
            f"<div class='card'>{bar_chart(list(ranks), [float(v) for v in ranks.values()], 'rank of the first relevant document', color='#6b59c9')}</div>"
        )
    top_scores = [r["hits"][0][2] for r in included if r.get("hits")]
    if top_scores:
        lo, hi = min(top_scores), max(top_scores)
        span = (hi - lo) or 1.0
        labels, counts = histogram([(s - lo) / span for s in top_scores])
        labels = [f"{lo + float(x) * span:.3g}" for x in labels]
        chart = bar_chart(labels, counts, "score of the top hit", color="#d8873b", label_every=3)
        out.append(f"<div class='card'>{chart}</div>")
    out.append("</div>")

    # latency
    per_stage = summary.get("timings", {}).get("per_query_ms", {})
    if per_stage:
        rows_ms = [(name, v["p50"], v["p95"]) for name, v in per_stage.items()]
        t = summary["timings"]
        out.append("<h2>Latency per stage</h2>")
        out.append(f"<div class='card'>{hbar_chart(rows_ms, 'search latency per stage (ms per query)')}</div>")
        out.append(
            f"<p class='meta'>batch query embedding {_fmt(t.get('embed_queries_s'), 2)} s · searching {_fmt(t.get('search_s'), 2)} s · "
            f"metrics and CIs {_fmt(t.get('metrics_s'), 2)} s</p>"
        )

    # worst examples
    worst = summary.get("worst", [])
    if worst:
        out.append(f"<h2>Worst {len(worst)} questions (lowest nDCG@{max_k}) with their retrieved context</h2>")
        for ex in worst:
            rel = ", ".join(f"{escape(d)}" + (f" ({g})" if g != 1 else "") for d, g in ex["relevant"].items())
            frr = ex.get("first_relevant_rank")
            out.append(
                f"<div class='ex'><div class='q'>{escape(ex['id'])}: {escape(ex['question'])}</div>"
                f"<div class='meta'>relevant: {rel} · first relevant rank: {frr or 'not retrieved'} · "
                f"nDCG@{max_k} {_fmt(ex['metrics'].get(f'ndcg@{max_k}'), 3)} · MRR {_fmt(ex['metrics'].get('mrr'), 3)}"
                + (f" · <b>search error: {escape(ex['error'])}</b>" if ex.get("error") else "")
                + "</div>"
            )
            for h in ex["hits"]:
                cls = "hit rel" if h["relevant"] > 0 else "hit"
                tag = "<span class='tag rel'>relevant</span>" if h["relevant"] > 0 else ""
                text = " ".join(h["text"].split())
                out.append(
                    f"<div class='{cls}'><div class='h'>#{h['rank']} · score {h['score']:.4f} · {escape(h['doc_id'])} "
                    f"<span class='tag'>{escape(h['source'])}</span>{tag}</div>{escape(text[:500])}{'…' if len(text) > 500 else ''}</div>"
                )
            out.append("</div>")
    out.append("</body></html>")
    return "\n".join(out)


# ---- the RAG run report (`twin eval rag`) --------------------------------------------------------------
_TRIAD = ("context_relevance", "groundedness", "answer_relevance")


def _judge_box(summary: dict[str, Any]) -> str:
    """How far to trust the judge, shown next to its scores."""
    judge = summary.get("judge", {})
    if summary.get("triad_method") != "llm":
        return "<p class='meta'>Triad scored with the deterministic fallbacks (no LLM judge): content-word overlap and embedding cosine.</p>"
    a = summary.get("judge_agreement")
    head = (f"judge <code>{escape(str(judge.get('model')))}</code> · scoring {escape(str(judge.get('method')))}"
            f" · temperature {judge.get('temperature')} · samples {judge.get('samples')}")
    if not a:
        note = summary.get("judge_agreement_note") or "not measured"
        return f"<div class='card warn'><b>Judge trust:</b> {head}<br>agreement with labelled pairs: <b>{escape(note)}</b></div>"
    return (
        f"<div class='card'><b>Judge trust:</b> {head}<br>on {a['pairs']} labelled pairs "
        f"(<code>{escape(_file_name(a.get('dataset', '')))}</code>, both orders each): pairwise accuracy "
        f"<b>{_fmt(a['accuracy'], 3)}</b> (ties as half: {_fmt(a['accuracy_ties_half'], 3)}; order-averaged probabilities: "
        f"{_fmt(a.get('accuracy_debiased'), 3)}) · position consistency "
        f"<b>{_fmt(a['position_consistency'], 3)}</b> · tie rate {_fmt(a['tie_rate'], 3)} · picks the first position "
        f"{_fmt(a['first_position_rate'], 3)} of the time · parse failures {a['parse_failures']}"
        f"<br><span class='meta'>measured {escape(a.get('created', ''))}; a judge near 0.5 accuracy is no better than a coin: "
        f"read its scores as weak signals.</span></div>"
    )


def _file_name(path: str) -> str:
    """The last part of a path."""
    return path.replace("\\", "/").rsplit("/", 1)[-1]


def render_rag_report(summary: dict[str, Any]) -> str:
    title = f"RAG evaluation {summary['run_id']}"
    ds = summary["dataset"]
    out = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{escape(title)}</title><style>{_CSS}.warn{{border-color:#e0b252;background:#fff8e6}}"
        ".ans{margin:6px 0;padding:6px 8px;background:#f3f0ff;border-left:3px solid #6b59c9}"
        ".claim{font-size:13px;margin:2px 0}.ok{color:#17603a}.bad{color:#a52a2a}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        "<p class='meta'>"
        f"dataset <code>{escape(ds['path'])}</code> ({ds['questions']} questions: {ds['answerable']} answerable, "
        f"{ds['unanswerable']} unanswerable; {ds['failed_lines']} unusable lines) · LLM <code>{escape(str(summary['models']['llm']))}</code> · "
        f"embedder <code>{escape(str(summary['models']['embedder']))}</code> · retrieval {escape(str(summary['retrieval'].get('mode')))}, "
        f"k={summary['retrieval'].get('k')} · "
        f"store version {summary.get('store_version')} · config {escape(str(summary.get('config_hash')))} · {escape(summary.get('created', ''))}</p>",
        f"<p class='meta'>{summary['abstained']} abstentions · {summary['no_claims']} answers without claims · "
        f"{summary['errors']} errors · {summary['judge_failures']} judge calls without a verdict (fallback used). "
        f"Conventions: {escape(summary.get('conventions', ''))}.</p>",
        _judge_box(summary),
    ]
    metrics = summary["metrics"]
    conf = next(iter(metrics.values()))["confidence"] if metrics else 0.95
    methods = summary.get("triad_methods", {})
    out.append(f"<h2>Metrics (mean and {conf:.0%} bootstrap CI)</h2><table><tr><th>metric</th><th>mean</th><th>CI</th><th>n</th><th>method</th></tr>")
    order = list(_TRIAD) + ["em", "f1", "contains", "false_abstention", "abstention", "context_hit", "context_mrr"]
    for name in [n for n in order if n in metrics] + [n for n in metrics if n not in order]:
        m = metrics[name]
        out.append(f"<tr><td>{escape(name)}</td><td>{_fmt(m['value'])}</td><td class='meta'>[{_fmt(m['low'], 3)}, {_fmt(m['high'], 3)}]</td>"
                   f"<td>{m['n']}</td><td class='meta'>{escape(methods.get(name, 'against the labels' if name not in _TRIAD else ''))}</td></tr>")
    out.append("</table>")

    out.append("<h2>Score distributions (questions per bin; a bin is labelled by its lower edge)</h2><div class='grid'>")
    for name, values in summary.get("distributions", {}).items():
        if values:
            labels, counts = histogram(values)
            out.append(f"<div class='card'>{bar_chart(labels, counts, name, color='#3b7dd8' if name in _TRIAD else '#2e9d5b')}</div>")
    out.append("</div>")

    per_stage = summary.get("timings", {}).get("per_question_ms", {})
    if per_stage:
        out.append("<h2>Latency per stage</h2>")
        out.append(f"<div class='card'>{hbar_chart([(n, v['p50'] / 1000, v['p95'] / 1000) for n, v in per_stage.items()], 'latency per question (s)', unit='s')}</div>")
        out.append(f"<p class='meta'>whole run {_fmt(summary['timings'].get('total_s'), 1)} s (judge included)</p>")

    worst = summary.get("worst", [])
    if worst:
        out.append(f"<h2>Worst {len(worst)} questions (lowest mean of F1 / abstention / triad) with their retrieved context</h2>")
        for ex in worst:
            t = ex["triad"]
            gold = "unanswerable" if ex["answerable"] is False else (ex["gold"] if ex["gold"] is not None else "–")
            scores = " · ".join(f"{n.replace('_', ' ')} {_fmt(t.get(n), 3)}" for n in _TRIAD)
            extra = " · ".join(f"{n} {_fmt(v, 3)}" for n, v in ex["metrics"].items() if n not in _TRIAD)
            out.append(f"<div class='ex'><div class='q'>{escape(ex['id'])}: {escape(ex['question'])}</div>"
                       f"<div class='meta'>gold: {escape(str(gold))} · {scores}" + (f" · {escape(extra)}" if extra else "") + "</div>"
                       f"<div class='ans'>{'<span class=tag>abstained</span> ' if ex['abstained'] else ''}{escape(ex['answer'] or '(empty)')}</div>")
            for c in t.get("claims", []):
                cls, mark = ("ok", "✓") if c["supported"] else ("bad", "✗")
                out.append(f"<div class='claim {cls}'>{mark} {escape(c['text'])} <span class='meta'>({escape(c['method'])} {_fmt(c['score'], 2)})</span></div>")
            rel = t.get("chunk_relevance", [])
            for i, h in enumerate(ex["context"]):
                cls = "hit rel" if h["relevant"] else "hit"
                tag = "<span class='tag rel'>gold</span>" if h["relevant"] else ""
                text = " ".join(h["text"].split())
                r = f" · relevance {_fmt(rel[i], 2)}" if i < len(rel) else ""
                out.append(f"<div class='{cls}'><div class='h'>#{h['rank']} · {escape(h['doc_id'])}{r} "
                           f"<span class='tag'>{escape(h['source'])}</span>{tag}</div>{escape(text[:400])}{'…' if len(text) > 400 else ''}</div>")
            out.append("</div>")
    out.append("</body></html>")
    return "\n".join(out)
