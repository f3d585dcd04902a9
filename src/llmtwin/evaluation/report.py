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
