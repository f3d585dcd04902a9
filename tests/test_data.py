"""`twin data build sft|preference` and `twin data decontaminate`: pairing counts, bad lines, n-gram
decontamination, and an SFT build from a tiny ingested corpus with the packaged LLM (resumed)."""

from __future__ import annotations

import json

import pytest

from llmtwin import Twin
from llmtwin.data.card import dataset_hash, read_card
from llmtwin.data.decontaminate import EvalIndex, decontaminate
from llmtwin.data.generate import parse_qa
from llmtwin.data.preference import (
    PreferenceStats,
    build_preference,
    ranking_pairs,
    read_pairs,
)
from llmtwin.data.rewards import get_reward
from llmtwin.data.sft import CACHE, SftOptions, build_sft
from llmtwin.errors import TwinError


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def _text(msgs):
    return msgs[0]["content"]


# ---------------------------------------------------------------- preference pairs


@pytest.mark.parametrize("k", [2, 3, 5])
def test_rankings_give_all_k_choose_2_pairs_best_first(k):
    comps = [f"completion number {i}" for i in range(k)]
    stats = PreferenceStats()
    pairs = ranking_pairs([{"role": "user", "content": "q"}], comps, None, "f:1", stats)
    assert len(pairs) == k * (k - 1) // 2
    expected = [(comps[i], comps[j]) for i in range(k) for j in range(i + 1, k)]
    assert [(_text(p["chosen"]), _text(p["rejected"])) for p in pairs] == expected
    assert all(p["prompt"] == [{"role": "user", "content": "q"}] and p["source"] == "ranking" for p in pairs)


def test_rankings_with_scores_sort_and_skip_ties(tmp_path):
    f = _write(tmp_path / "r.jsonl", [
        {"prompt": "Name a colour.", "completions": ["blue", "green", "red", "grey"], "scores": [0.2, 0.9, 0.2, 0.5]},
    ])
    stats = PreferenceStats()
    pairs = read_pairs("rankings", [f], stats)
    # order by score: green .9, grey .5, blue .2, red .2 → 6 pairs less the blue/red tie
    assert stats.ties == 1 and len(pairs) == 5
    assert (_text(pairs[0]["chosen"]), _text(pairs[0]["rejected"])) == ("green", "grey")
    assert all(p["score_chosen"] > p["score_rejected"] for p in pairs)


def test_thumbs_pair_each_up_with_each_down(tmp_path):
    f = _write(tmp_path / "t.jsonl", [
        {"prompt": "A?", "completion": "good one", "thumb": "up"},
        {"prompt": "A?", "completion": "bad one", "thumb": "down"},
        {"prompt": "A?", "completion": "good two", "thumb": "up"},
        {"prompt": "A?", "completion": "bad two", "thumb": "down"},
        {"prompt": "A?", "completion": "bad three", "thumb": "down"},
        {"prompt": "B?", "completion": "only liked", "thumb": "up"},
        {"prompt": "C?", "completion": "x", "thumb": "sideways"},
    ])
    stats = PreferenceStats()
    pairs = read_pairs("thumbs", [f], stats)
    assert len(pairs) == 2 * 3 and stats.unpaired_prompts == 1
    assert {_text(p["chosen"]) for p in pairs} == {"good one", "good two"}
    assert {_text(p["rejected"]) for p in pairs} == {"bad one", "bad two", "bad three"}
    assert [(b.line, "thumb" in b.error) for b in stats.bad] == [(7, True)]


def test_corrections_and_bad_lines_reported_with_file_and_line(tmp_path):
    f = _write(tmp_path / "c.jsonl", [
        {"prompt": "Capital of France?", "original": "Lyon.", "corrected": "Paris.", "system": "Be brief."},
        '{"prompt": "cut short", "orig',
        {"prompt": "Q?", "original": "same", "corrected": "same"},
        {"original": "no prompt", "corrected": "x"},
        ["not", "an", "object"],
        {"prompt": [{"role": "user", "content": "Two plus two?"}], "original": "5", "corrected": "4"},
    ])
    card, stats = build_preference("corrections", [f], tmp_path / "prefs", val_fraction=0.0)
    rows = [json.loads(line) for line in (tmp_path / "prefs" / "train.jsonl").read_text().splitlines()]
    assert [(_text(r["chosen"]), _text(r["rejected"])) for r in rows] == [("Paris.", "Lyon."), ("4", "5")]
    assert rows[0]["prompt"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}]
    assert [(b.line, b.path) for b in stats.bad] == [(2, str(f)), (4, str(f)), (5, str(f))]
    assert "prompt" in stats.bad[1].error and stats.identical == 1
    assert card["kind"] == "preference" and card["counts"]["pairs"] == 2 and len(card["bad_lines"]) == 3
    assert card["content_hash"] == dataset_hash(tmp_path / "prefs")


def test_rewards_builtin_and_errors():
    assert get_reward("length")("q", "one two three", {}) == 3.0
    assert get_reward("regex:\\d+")("q", "it is 42", {}) == 1.0
    assert get_reward("contains:PARIS")("q", "in paris", {}) == 1.0
    assert get_reward("support")("q", "glaciers carve valleys", {"context": "Glaciers carve U-shaped valleys."}) == 1.0
    assert get_reward("json:loads") is not None
    with pytest.raises(TwinError, match="regular expression"):
        get_reward("regex:(")
    with pytest.raises(TwinError, match="expected length"):
        get_reward("nonsense")


@pytest.fixture(scope="module")
def llm1():
    """The packaged LLM on one thread: on a busy 2-core machine two llama.cpp threads wait on each other."""
    from llmtwin.config import LLMConfig
    from llmtwin.models.get import get_llm

    return get_llm(LLMConfig(threads=1))


@pytest.mark.model
def test_reward_pairs_from_sampled_llm_completions(tmp_path, llm1):
    f = _write(tmp_path / "p.jsonl", [{"prompt": "Write one sentence about the sea."}, {"no": "prompt"}])
    stats = PreferenceStats()

    def sample(messages):
        return llm1.complete(messages, max_new_tokens=24, temperature=1.0)

    pairs = read_pairs("reward", [f], stats, sample=sample, reward=get_reward("length"), n=3)
    assert stats.samples == 3 and len(stats.bad) == 1 and stats.bad[0].line == 2
    assert len(pairs) + stats.ties + stats.identical == 1
    for p in pairs:
        assert p["score_chosen"] > p["score_rejected"]
        assert len(_text(p["chosen"]).split()) == p["score_chosen"]


def test_cli_preference_build_reports_bad_lines(tmp_path, twin_cli):
    Twin(tmp_path)  # a project
    f = _write(tmp_path / "r.jsonl", [{"prompt": "Q1?", "completions": ["a1", "b1", "c1"]}, "{broken",
                                      {"prompt": "Q2?", "completions": ["a2", "b2"]}])
    proc = twin_cli("data", "build", "preference", "--from", "rankings", str(f), "--name", "p", cwd=tmp_path, check=True)
    assert f"{f}:2" in proc.stdout and "4 pairs" in proc.stdout
    card = read_card(tmp_path / ".twin" / "datasets" / "p")
    assert card["counts"]["train"] + card["counts"]["validation"] == 4 and card["counts"]["bad_lines"] == 1
    proc = twin_cli("data", "build", "preference", "--from", "votes", str(f), cwd=tmp_path)
    assert proc.returncode == 2 and "--from 'votes'" in proc.stderr


# ---------------------------------------------------------------- decontamination

EVAL_Q = "Which river flows through the old capital of the northern kingdom in winter?"


def test_decontaminate_finds_planted_ngrams_and_keeps_clean(tmp_path, twin_cli):
    long_eval = ("The committee met on a rainy Tuesday to discuss the annual budget for parks, libraries, "
                 "roads and the new swimming pool near the station, and agreed on nothing at all.")
    evals = _write(tmp_path / "eval.jsonl", [{"id": "e1", "question": EVAL_Q, "answer": "The Vell."},
                                             {"id": "e2", "text": long_eval}])
    planted = "the annual budget for parks libraries roads and"  # 8 words of e2
    train = _write(tmp_path / "train.jsonl", [
        {"prompt": [{"role": "user", "content": "Tell me about rivers."}],
         "completion": [{"role": "assistant", "content": f"People often ask: {EVAL_Q} It is a fine question."}]},
        {"prompt": "Summarise the meeting.", "completion": f"They argued about {planted} many other things for hours."},
        {"prompt": "Describe a lighthouse keeper.", "completion": "He climbed the spiral stairs every evening to light the lamp."},
        "{oops",
    ])
    index = EvalIndex(8)
    index.add_file(evals)
    rows = [json.loads(line) for line in train.read_text().splitlines()[:3]]
    kept, found = decontaminate(rows, index, threshold=0.5)
    assert [f.eval_where for f in found] == [f"{evals}:1"] and found[0].overlap == 1.0
    assert kept == rows[1:]
    kept, found = decontaminate(rows, index, threshold=0.0)  # any shared 8-gram
    assert len(found) == 2 and found[1].shared_ngrams == 1 and found[1].eval_where == f"{evals}:2"
    assert kept == rows[2:]

    out, report = tmp_path / "clean.jsonl", tmp_path / "report.json"
    proc = twin_cli("data", "decontaminate", str(train), "--against", str(evals), "--threshold", "0",
                    "--out", str(out), "--report", str(report), check=True)
    assert "2 of 3 examples" in proc.stdout and f"{train}:4" in proc.stdout
    result = json.loads(report.read_text())
    assert [f["example"] for f in result["found"]] == [f"{train}:1", f"{train}:2"]
    assert [json.loads(line)["prompt"] for line in out.read_text().splitlines()] == ["Describe a lighthouse keeper."]
    # only the completion field: the planted text is still found; only the prompt field: nothing is
    proc = twin_cli("data", "decontaminate", str(train), "--against", str(evals), "--field", "prompt", "--json", check=True)
    assert json.loads(proc.stdout)["contaminated"] == 0


# ---------------------------------------------------------------- SFT from the store

DOCS = {
    "glaciers.md": "# Glaciers\n\nGlaciers are rivers of ice that flow slowly downhill under their own weight. "
                   "They carve U-shaped valleys into the mountains. Melting glaciers raise the level of the sea, "
                   "and the Aletsch glacier in Switzerland is the largest glacier of the Alps.\n",
    "violins.md": "# Violins\n\nA violin has four strings tuned in perfect fifths. The bow is strung with horsehair "
                  "and rubbed with rosin so that it grips the strings. Antonio Stradivari made the most famous "
                  "violins in Cremona, Italy, in the early eighteenth century.\n",
    "tides.md": "# Tides\n\nTides rise and fall twice a day because of the pull of the Moon on the oceans. Spring "
                "tides happen at full and new moon, when the Sun and the Moon pull together. Neap tides are the "
                "weakest tides of the month and happen at the quarter moons.\n",
}


def test_parse_qa_is_lenient():
    reply = ("Q: What do glaciers carve?\nA: U-shaped valleys.\n**Question 2:** Why do tides rise?\n"
             "**Answer:** The pull of the Moon.\n3. Who made violins?\nStradivari did.\nQ: dangling?")
    assert [(p.question, p.answer) for p in parse_qa(reply)] == [
        ("What do glaciers carve?", "U-shaped valleys."), ("Why do tides rise?", "The pull of the Moon."),
        ("Who made violins?", "Stradivari did.")]
    assert parse_qa("I cannot help with that.") == []


def test_build_sft_from_store_resumes_and_writes_contract(tmp_path, embedder, llm1, twin_cli):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name, text in DOCS.items():
        (corpus / name).write_text(text, encoding="utf-8")
    twin = Twin(tmp_path / "proj")
    twin.ingest([corpus])
    evals = _write(tmp_path / "eval.jsonl", [{"question": "Which violins are famous?", "reference":
                   "Antonio Stradivari made the most famous violins in Cremona, Italy, in the early eighteenth century."}])
    cfg = twin.config
    twin.project.config = cfg.model_copy(update={"llm": cfg.llm.model_copy(update={"threads": 1}),
                                                 "data": cfg.data.model_copy(update={"max_new_tokens": 64})})
    opts = SftOptions(name="tiny", per_chunk=1, val_fraction=0.34, against=[str(evals)])

    # interrupted after one chunk: its reply is cached, nothing else is written
    partial = build_sft(twin, opts, stop_after=1)
    out = twin.project.state_dir / "datasets" / "tiny"
    assert partial["interrupted"] and len((out / CACHE).read_text().splitlines()) == 1
    assert not (out / "train.jsonl").exists()

    card = build_sft(twin, opts)
    c = card["counts"]
    assert c["chunks"] == 3 and c["chunks_cached"] == 1 and c["chunks_generated"] == 2
    assert len((out / CACHE).read_text().splitlines()) == 3
    assert card["kind"] == "sft" and card["store_version"] == twin.store().current_version()
    assert card["generator"] == llm1.name and card["content_hash"] == dataset_hash(out)
    assert c["filtered"].get("contaminated", 0) >= 1  # the violin chunk's voice pair repeats the eval reference
    rows = {s: [json.loads(line) for line in (out / f"{s}.jsonl").read_text().splitlines()] for s in ("train", "validation")}
    assert rows["train"] and rows["validation"]
    for r in rows["train"] + rows["validation"]:
        assert [m["role"] for m in r["prompt"]] == ["user"] and [m["role"] for m in r["completion"]] == ["assistant"]
        assert r["prompt"][0]["content"].strip() and r["completion"][0]["content"].strip()
        assert r["kind"] in ("qa", "voice") and r["id"] and r["chunk_id"]
        assert "Stradivari made the most famous violins" not in r["completion"][0]["content"]
    assert not {r["chunk_id"] for r in rows["train"]} & {r["chunk_id"] for r in rows["validation"]}
    assert c["kept"] == len(rows["train"]) + len(rows["validation"])
    assert sum(1 for r in rows["train"] + rows["validation"] if r["kind"] == "voice") == 2

    again = build_sft(twin, opts)  # everything cached: same data, same hash, no generation
    assert again["counts"]["chunks_cached"] == 3 and again["counts"]["chunks_generated"] == 0
    assert again["content_hash"] == card["content_hash"]

    # a time budget that is already spent: nothing generated, written from what is there (voice only)
    budget = build_sft(twin, SftOptions(name="budget", per_chunk=1, max_minutes=0.0))
    assert budget["counts"]["chunks_pending"] == 3 and budget["counts"]["by_kind"] == {"voice": 3}

    # the CLI, voice pairs only (--per-chunk 0 loads no LLM)
    proc = twin_cli("data", "build", "sft", "--per-chunk", "0", "--name", "voice", "--json", cwd=twin.project.root, check=True)
    voice = json.loads(proc.stdout)
    assert voice["generator"] == "none" and voice["counts"]["kept"] == 3
    assert voice["content_hash"] == dataset_hash(twin.project.state_dir / "datasets" / "voice")


def test_filters_language_and_answerability():
    from llmtwin.data.filters import answerability_reason, language_reason

    assert language_reason("This is the text of a short test that we wrote in English.", "en") is None
    assert "function words" in language_reason("Das ist ein kleiner Test über die Sprache der Texte hier", "en")
    assert "Latin" in language_reason("Это короткий текст на русском языке", "en")
    assert language_reason("Это короткий текст на русском языке", "any") is None
    chunk = DOCS["tides.md"]
    assert answerability_reason("Why do tides rise?", "Because the Moon pulls on the oceans.", chunk, 0.6) is None
    assert "support" in answerability_reason("Why do tides rise?", "Because of strong winds from Jupiter.", chunk, 0.6)
    assert "trivial" in answerability_reason("Why do neap tides happen?", "Neap tides happen.", chunk, 0.6)
    assert "refuses" in answerability_reason("Why do tides rise?", "I don't know.", chunk, 0.6)
    assert "no content word" in answerability_reason("Who painted the Mona Lisa?", "The Moon and the oceans.", chunk, 0.6)


def test_extractive_answer_picks_the_best_prose_sentence():
    from llmtwin.data.filters import extractive_answer, prose_sentences

    text = ("# Tides\n\nTides rise and fall twice a day because of the pull\nof the Moon on the oceans. Spring tides "
            "happen at full and new moon.\n\n| col | umn |\n|---|---|\n| Moon | oceans pull tides |\n")
    assert prose_sentences(text) == ["Tides rise and fall twice a day because of the pull of the Moon on the oceans.",
                                     "Spring tides happen at full and new moon."]
    assert extractive_answer("Why do the tides rise and fall?", text).startswith("Tides rise and fall twice")
    assert extractive_answer("Who painted the Mona Lisa?", text) is None
