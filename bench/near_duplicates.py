"""Near-duplicate records and search: are passages that differ in one name still findable?

    .venv/bin/python bench/near_duplicates.py [--passages 5000 --pairs 300]

Writes a generated corpus of `--passages` short passages with their own ids (a JSONL file): most
are distinct, and `--pairs` of them are copies of another passage with one name changed (Jaccard
of 5-word shingles ≥ 0.8: ingest finds them as near duplicates). Each such copy states its own fact
("... was won by NAME ..."), so a question naming NAME should find it. The corpus is ingested twice,
with `ingest.near_duplicates: keep` (the default) and `drop`, and for every changed passage the
question "Who ... NAME ..." is searched (hybrid, top 5): the share found is reported for both.
Results: bench/results/near_duplicates.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from llmtwin import Twin  # noqa: E402

FIRST = "Marta Ingrid Sofia Astrid Elin Freja Maja Alma Nora Ida Ebba Vera Linnea Tilde Saga Klara".split()
LAST = "Olsen Berg Lund Holm Strand Dahl Ek Lind Nyberg Falk Sjoberg Wik Hall Borg Moberg Vik".split()
EVENTS = "regatta marathon chess-tournament ski-race bake-off rowing-cup fishing-contest choir-festival".split()
PLACES = "Ostervik Nordby Solberg Vestfjord Hammarby Lillestad Tornby Ekeby Fjallnas Grankulla".split()


def passage(rng: random.Random, winner: str) -> str:
    event, place = rng.choice(EVENTS).replace("-", " "), rng.choice(PLACES)
    year, boats, hours = rng.randint(1950, 2024), rng.randint(12, 90), rng.randint(2, 9)
    return (f"The {year} {event} at {place} was won by {winner}, who finished ahead of {boats} other "
            f"entrants from the surrounding villages after {hours} hours of competition. The weather held "
            f"fair all day, a steady breeze came off the water, and the harbour master rang the old bronze "
            f"bell as each entrant crossed the line in front of the crowd gathered on the pier at {place}. "
            f"Prizes were handed out by the mayor after a supper of grilled fish, and the evening ended "
            f"with fiddle music and dancing in the old boathouse until long after midnight.")


def corpus(n: int, pairs: int, seed: int = 0) -> tuple[list[dict], list[tuple[str, str]]]:
    rng = random.Random(seed)
    records, changed = [], []
    for i in range(n - pairs):
        records.append({"id": f"p{i:05d}", "text": passage(rng, f"{rng.choice(FIRST)} {rng.choice(LAST)}")})
    for j in range(pairs):
        original = records[rng.randrange(n - pairs)]
        name = f"{rng.choice(FIRST)} {rng.choice(LAST)}-{j}"  # a name no other passage holds
        text = original["text"].split(" was won by ")[0] + f" was won by {name}, " + original["text"].split(", ", 1)[1]
        records.append({"id": f"c{j:05d}", "text": text})
        changed.append((f"c{j:05d}", name))
    return records, changed


def measure(root: Path, records: list[dict], changed: list[tuple[str, str]], mode: str) -> dict:
    (root / "data").mkdir(parents=True)
    (root / "data" / "records.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    twin = Twin(root)
    twin.project.config.ingest.near_duplicates = mode
    twin.project.config.ingest.sentence_vectors = False
    t = time.perf_counter()
    report = twin.ingest([root / "data"])
    ingest_s = time.perf_counter() - t
    near = [d for d in report.duplicates if d.kind == "near"]
    found = sum(
        any(h.chunk.doc_id == doc_id for h in twin.search(f"Who is {name} and what did they win?", k=5))
        for doc_id, name in changed
    )
    return {"near_duplicates_found_at_ingest": len(near), "changed_passages": len(changed),
            "found_in_top5": found, "share_found": round(found / len(changed), 4), "ingest_s": round(ingest_s, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--passages", type=int, default=5000)
    ap.add_argument("--pairs", type=int, default=300)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "near_duplicates.json")
    args = ap.parse_args()
    records, changed = corpus(args.passages, args.pairs)
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "load_before": os.getloadavg()[0], "command": " ".join(sys.argv)}
    with tempfile.TemporaryDirectory(prefix="llmtwin-neardup-") as tmp:
        for mode in ("keep", "drop"):
            result[mode] = measure(Path(tmp) / mode, records, changed, mode)
            print(mode, result[mode], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
