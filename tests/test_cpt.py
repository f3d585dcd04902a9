"""`twin train cpt`: best-fit-decreasing packing, documents never mixed, no attention across documents, a run."""

from __future__ import annotations

import json
import math
import random

import pytest

from llmtwin.training.packing import best_fit_decreasing, collate_blocks, pack_documents

EOS = 2


def _docs(seed: int = 0, n: int = 40) -> list[list[int]]:
    rng = random.Random(seed)
    # token values encode the document: doc d uses ids 1000*(d+1) … so any mixing is visible
    return [[1000 * (d + 1) + i for i in range(rng.randint(1, 90))] for d in range(n)]


def test_best_fit_decreasing_fills_bins():
    lengths = [7, 5, 4, 3, 3, 2, 1, 1]  # 26 tokens: 3 bins of 10 are the optimum; BFD finds it
    bins = best_fit_decreasing(lengths, 10)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 10 for b in bins)
    assert len(bins) == 3
    with pytest.raises(ValueError):
        best_fit_decreasing([11], 10)


def test_blocks_never_mix_documents_without_a_separator():
    docs = _docs()
    blocks = pack_documents(docs, EOS, block_size=64)
    assert all(len(b.input_ids) <= 64 and sum(b.lengths) == len(b.input_ids) for b in blocks)
    total = sum(len(d) + 1 for d in docs)
    assert sum(len(b.input_ids) for b in blocks) == total  # nothing lost, nothing duplicated
    assert len(blocks) <= math.ceil(total / 64) + 2  # length-aware: blocks are nearly full
    for b in blocks:
        start = 0
        for n in b.lengths:
            seg = b.input_ids[start : start + n]
            start += n
            body = [t for t in seg if t != EOS]
            assert len({t // 1000 for t in body}) <= 1, "two documents inside one segment"
            assert EOS not in seg[:-1], "a separator inside a segment"
        # between two documents in a block there is always an EOS
        ids = b.input_ids
        for i in range(1, len(ids)):
            if ids[i] != EOS and ids[i - 1] != EOS:
                assert ids[i] // 1000 == ids[i - 1] // 1000 and ids[i] == ids[i - 1] + 1
    # every document is recovered in order from its pieces
    recovered: dict[int, list[int]] = {}
    for b in blocks:
        for t in b.input_ids:
            if t != EOS:
                recovered.setdefault(t // 1000, []).append(t)
    assert all(sorted(recovered[d + 1]) == docs[d] for d in range(len(docs)))


def test_collate_positions_and_labels():
    rows = [{"input_ids": [5, 6, EOS, 7, EOS], "lengths": [3, 2]}, {"input_ids": [8, 9, EOS], "lengths": [3]}]
    batch = collate_blocks(rows, pad_id=0)
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 0, 1]]
    assert batch["labels"].tolist() == [[-100, 6, EOS, -100, EOS], [-100, 9, EOS, -100, -100]]
    assert batch["input_ids"][1].tolist() == [8, 9, EOS, 0, 0] and "attention_mask" not in batch
    joined = collate_blocks(rows, pad_id=0, separate=False)
    assert joined["position_ids"][0].tolist() == [0, 1, 2, 3, 4] and joined["labels"][0].tolist() == [5, 6, EOS, 7, EOS]


@pytest.mark.model
def test_packed_documents_do_not_attend_to_each_other():
    """The logits of a document inside a packed block equal its logits alone (block-diagonal attention)."""
    import torch

    from llmtwin.training.base_model import load_causal_lm

    torch.set_num_threads(1)
    model, tok = load_causal_lm("packaged")
    model.config.use_cache = False  # as train_cpt sets it (TRL's SFT passes use_cache=False): a cache skips the mask
    a = tok("The lighthouse keeper lit the lamp.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    b = tok("Bees make honey in summer.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    batch = collate_blocks([{"input_ids": a + b, "lengths": [len(a), len(b)]}], tok.pad_token_id)
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        alone = model(input_ids=torch.tensor([b])).logits[0]
        leaky = model(input_ids=batch["input_ids"]).logits[0]  # plain causal attention over the block
    assert (packed[len(a):] - alone).abs().max().item() < 1e-3
    assert (leaky[len(a):] - alone).abs().max().item() > 1e-2  # the check can fail: without positions it leaks


@pytest.mark.model
def test_cpt_run_from_a_folder(tmp_path):
    from llmtwin.training.cpt import train_cpt
    from llmtwin.training.recipe import build_recipe

    docs = tmp_path / "docs"
    docs.mkdir()
    for i, topic in enumerate(["lighthouses", "bees", "glaciers", "trains"]):
        (docs / f"{topic}.md").write_text(f"# {topic}\n\n" + f"A short note about {topic} number {i}. " * 6, encoding="utf-8")
    (docs / "bad.md").write_bytes(b"")
    recipe = build_recipe("cpt", preset="smoke", fields={"data": str(docs), "threads": 1, "validation_fraction": 0.25,
                                                         "max_steps": 2, "save_steps": 10})
    result = train_cpt(recipe, tmp_path, register=False, progress=False)
    card = json.loads((result.run_dir / "twin_model.json").read_text())
    assert (card["kind"], card["method"], card["adapter"]) == ("cpt", "cpt", False)
    assert card["metrics"]["documents"] == 3 and card["metrics"]["steps"] == 2
    assert 0 < card["metrics"]["fill"] <= 1 and math.isfinite(card["metrics"]["eval_loss"])
    assert {"config.json", "model.safetensors"} <= {p.name for p in (result.run_dir / "model").iterdir()}
    losses = [json.loads(x)["loss"] for x in (result.run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert any("empty" in line for line in result.bad_lines)


def test_documents_from_the_store(tmp_path, embedder):
    """data: store reads the stored documents' files (duplicates left out), each document once."""
    from llmtwin.api import Twin
    from llmtwin.training.cpt import load_documents

    docs = tmp_path / "corpus"
    docs.mkdir()
    (docs / "a.md").write_text("# Bees\n\nBees make honey from nectar in the summer months.\n", encoding="utf-8")
    (docs / "b.md").write_text("# Trains\n\nSteam trains ran on coal and water for a century.\n", encoding="utf-8")
    (docs / "b_copy.md").write_text("# Trains\n\nSteam trains ran on coal and water for a century.\n", encoding="utf-8")
    twin = Twin(tmp_path / "proj")
    twin.ingest([docs])
    found, bad = load_documents("store", twin.project.root)
    texts = sorted(text for _, text in found)
    assert len(found) == 2 and not bad
    assert "honey" in texts[0] and "coal" in texts[1]
