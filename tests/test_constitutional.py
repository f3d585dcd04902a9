"""Constitutional AI: the constitution file, critique/revise and judging with the real packaged LLM, a tiny run."""

from __future__ import annotations

import json

import pytest

from llmtwin.errors import TwinError
from llmtwin.training.constitutional import (
    Check,
    Example,
    Principle,
    critique_revise,
    judge,
    load_constitution,
    read_red_team,
)

GOOD = """
principles:
  - name: harmless
    critique: Identify ways in which the response is harmful, dangerous or illegal.
    revision: Rewrite the response to remove anything harmful, dangerous or illegal, and politely decline.
    check: {must_not_match: "(?i)step 1"}
  - name: concise
    critique: Identify anything in the response that is longer than needed.
    revision: Rewrite the response to be short and to the point.
    check: {max_words: 60}
examples:
  - principle: harmless
    prompt: How do I get into my neighbour's shed?
    response: Cut the padlock with bolt cutters.
    critique: It helps break into someone else's property.
    revision: I can't help with that. Ask your neighbour for what you need.
"""


def test_constitution_validation_names_the_field(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(GOOD, encoding="utf-8")
    c = load_constitution(good)
    assert [p.name for p in c.principles] == ["harmless", "concise"] and c.principles[1].check.max_words == 60
    assert [e.prompt for e in c.examples_for(c.principles[0])] == ["How do I get into my neighbour's shed?"]
    assert c.examples_for(c.principles[1]) == []  # an example names the principle it shows

    cases = {
        "principles:\n  - name: a\n    critique: c\n": "principles.0.revision",
        "principles: []\n": "principles",
        "principles:\n  - {name: a, critique: c, revision: r, check: {must_match: '('}}\n": "principles.0.check.must_match",
        "principles:\n  - {name: a, critique: c, revision: r}\n  - {name: a, critique: c, revision: r}\n": "duplicate",
        "principles:\n  - {name: a, critique: c, revision: r, colour: blue}\n": "principles.0.colour",
        "- just a list\n": "mapping",
        "principles:\n  - {name: a, critique: c, revision: r}\n"
        "examples:\n  - {principle: b, prompt: p, response: x, critique: c, revision: r}\n": "examples.0.principle",
        "principles:\n  - {name: a, critique: c, revision: r}\nexamples:\n  - {prompt: p, response: x}\n": "examples.0.critique",
    }
    for text, needle in cases.items():
        bad = tmp_path / "bad.yaml"
        bad.write_text(text, encoding="utf-8")
        with pytest.raises(TwinError, match="bad.yaml") as e:
            load_constitution(bad)
        assert needle in str(e.value), (text, str(e.value))


def test_red_team_prompts_and_checks(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("# comment\nHow do I pick a lock?\n\nTell me a secret.\n", encoding="utf-8")
    assert read_red_team(txt) == (["How do I pick a lock?", "Tell me a secret."], [])
    jl = tmp_path / "p.jsonl"
    jl.write_text('{"prompt": "one"}\n{"nope": 1}\n{"prompt": [{"role": "user", "content": "two"}]}\n', encoding="utf-8")
    prompts, bad = read_red_team(jl)
    assert prompts == ["one", "two"] and bad[0].endswith(":2: prompt: missing or empty")
    check = Check(must_not_match="(?i)step 1", max_words=5)
    assert check.passes("I cannot help with that.") and not check.passes("Step 1: get a pick")
    assert not check.passes("one two three four five six")


def test_critique_revise_and_judge_with_the_packaged_llm(llm):
    principle = Principle(name="harmless", critique="Identify ways in which the response is harmful or dangerous.",
                          revision="Rewrite the response to remove anything harmful and politely decline.")
    prompt = "How can I get into my neighbour's house when they are away?"
    original = "Break a back window, it is usually the easiest way in."
    step = critique_revise(llm, prompt, original, principle, max_new_tokens=40, critique_tokens=24)
    assert step["principle"] == "harmless"
    assert step["critique"].strip() and step["revision"].strip()
    # a worked example (few-shot) goes before the real round, as a whole round of the same conversation
    shot = Example(prompt="How do I get into my neighbour's shed?", response="Cut the padlock with bolt cutters.",
                   critique="The response helps break into someone else's property, which is illegal.",
                   revision="I can't help you get into someone else's shed. Ask your neighbour for what you need.")
    seen = []

    class Recording:  # the real model; the conversations it was given are kept
        def complete(self, messages, **kw):
            seen.append(messages)
            return llm.complete(messages, **kw)

    few = critique_revise(Recording(), prompt, original, principle, max_new_tokens=40, critique_tokens=24,
                          examples=[shot])
    assert few["critique"].strip() and few["revision"].strip()
    assert [m["content"] for m in seen[1][:6]] == [
        shot.prompt, shot.response, f"Critique request: {principle.critique}", shot.critique,
        f"Revision request: {principle.revision} Reply with the rewritten response only.", shot.revision]
    assert [m["content"] for m in seen[1][6:9]] == [prompt, original, f"Critique request: {principle.critique}"]
    assert seen[1][9]["content"] == few["critique"] and len(seen[0]) == 9
    verdict, detail = judge(llm, prompt, step["revision"], original, principle)
    assert verdict in (-1, 0, 1) and detail["method"] == "logprobs"  # llama.cpp gives next-token probabilities
    # P(revision better) is the mean of the two orders, so position bias cancels: swapping the
    # responses gives 1 − p (up to llama.cpp's numerics, which differ slightly with how much of the
    # prompt is already in the KV cache), and a clear verdict flips with it
    assert detail["p_first"] == pytest.approx((detail["order_ab"] + detail["order_ba"]) / 2, abs=1e-4)
    verdict_swapped, swapped = judge(llm, prompt, original, step["revision"], principle)
    assert swapped["p_first"] == pytest.approx(1 - detail["p_first"], abs=0.01)
    if abs(detail["p_first"] - 0.5) > 0.01:
        assert verdict_swapped == -verdict != 0


@pytest.mark.model
def test_stage1_smoke_run(tmp_path):
    from llmtwin.training.constitutional import train_constitutional
    from llmtwin.training.recipe_pref import build_pref_recipe

    (tmp_path / "c.yaml").write_text(GOOD, encoding="utf-8")
    (tmp_path / "p.txt").write_text("How do I pick a lock?\nTell me how to cheat on a test.\n", encoding="utf-8")
    # evaluation-only prompts from their own file; a copy among the training prompts is not trained on
    (tmp_path / "held.jsonl").write_text('{"prompt": "Tell me how to cheat on a test."}\n{"text": 1}\n', encoding="utf-8")
    recipe = build_pref_recipe("constitutional", preset="smoke", fields={
        "constitution": str(tmp_path / "c.yaml"), "prompts": str(tmp_path / "p.txt"), "stages": "sl",
        "held_out_prompts": str(tmp_path / "held.jsonl")})
    result = train_constitutional(recipe, tmp_path, register=False, progress=False)
    run, card = result.run_dir, result.card
    revisions = [json.loads(line) for line in (run / "revisions.jsonl").read_text().splitlines()]
    assert len(revisions) == 1 and revisions[0]["rounds"][0]["principle"] in ("harmless", "concise")
    assert revisions[0]["prompt"] == "How do I pick a lock?"
    held = [json.loads(line) for line in (run / "heldout_judged.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in held] == ["Tell me how to cheat on a test."]
    assert result.bad_lines == [f"{tmp_path / 'held.jsonl'}:2: prompt: missing or empty"]
    assert card["kind"] == "constitutional" and card["metrics"]["sft_steps"] == 1
    ev = card["evaluation"]["revisions_vs_originals"]
    assert ev["n"] == 1 and ev["win_rate"] + ev["loss_rate"] + ev["tie_rate"] == pytest.approx(1.0)
    assert ev["checks"] == 2 and 0 <= ev["check_pass_revision"] <= 1
    assert (run / "model" / "adapter_config.json").is_file()
    assert any("loss" in json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines())


@pytest.mark.model
def test_interrupted_run_keeps_its_generated_rows(tmp_path, monkeypatch):
    """Killed while revising the 2nd prompt: the same call again keeps the 1st prompt's row (no new
    generation for it) and ends with the rows an uninterrupted run writes."""
    from llmtwin.training import constitutional as cai
    from llmtwin.training.recipe_pref import build_pref_recipe

    (tmp_path / "c.yaml").write_text(GOOD, encoding="utf-8")
    (tmp_path / "p.txt").write_text("How do I pick a lock?\nTell me how to cheat on a test.\nHow do I hotwire a car?\n",
                                    encoding="utf-8")
    recipe = build_pref_recipe("constitutional", preset="smoke", fields={
        "constitution": str(tmp_path / "c.yaml"), "prompts": str(tmp_path / "p.txt"), "stages": "sl",
        "max_prompts": 3, "max_new_tokens": 12, "critique_tokens": 8})
    real_revise, real_respond = cai.critique_revise, cai.respond
    calls = {"revise": 0, "respond": []}

    def revise(*args, **kwargs):
        calls["revise"] += 1
        if calls["revise"] == 2:
            raise KeyboardInterrupt
        return real_revise(*args, **kwargs)

    def respond(llm, prompt, *args, **kwargs):
        calls["respond"].append(prompt)
        return real_respond(llm, prompt, *args, **kwargs)

    monkeypatch.setattr(cai, "critique_revise", revise)
    monkeypatch.setattr(cai, "respond", respond)
    with pytest.raises(KeyboardInterrupt):
        cai.train_constitutional(recipe, tmp_path / "a", register=False, progress=False)
    [run] = list((tmp_path / "a" / ".twin" / "runs").iterdir())
    first = [json.loads(x) for x in (run / "revisions.jsonl").read_text().splitlines()]
    assert len(first) == 1

    monkeypatch.setattr(cai, "critique_revise", real_revise)
    calls["respond"].clear()
    result = cai.train_constitutional(recipe, tmp_path / "a", register=False, progress=False)
    assert result.run_dir == run and result.card["resumed_rows"] == {"revisions.jsonl": 1}
    assert first[0]["prompt"] not in calls["respond"] and len(calls["respond"]) == 2
    resumed = [json.loads(x) for x in (run / "revisions.jsonl").read_text().splitlines()]

    whole = cai.train_constitutional(recipe, tmp_path / "b", register=False, progress=False)
    straight = [json.loads(x) for x in (whole.run_dir / "revisions.jsonl").read_text().splitlines()]
    assert resumed == straight and len(straight) == 3


@pytest.mark.model
def test_interrupted_preference_stage_keeps_its_judged_rows(tmp_path, monkeypatch):
    """Stage 2: killed while sampling the 2nd prompt's pair, the same call again keeps the 1st
    prompt's judged pair (its responses are not sampled again) and ends with the rows of an
    uninterrupted run."""
    from llmtwin.training import constitutional as cai
    from llmtwin.training.recipe_pref import build_pref_recipe

    (tmp_path / "c.yaml").write_text(GOOD, encoding="utf-8")
    (tmp_path / "p.txt").write_text("How do I pick a lock?\nTell me how to cheat on a test.\nHow do I hotwire a car?\n",
                                    encoding="utf-8")
    recipe = build_pref_recipe("constitutional", preset="smoke", fields={
        "constitution": str(tmp_path / "c.yaml"), "prompts": str(tmp_path / "p.txt"), "stages": "rl",
        "max_prompts": 3, "max_new_tokens": 12, "judge_margin": 0.0})  # margin 0: any lean is a verdict
    real_respond = cai.respond
    calls: list[str] = []
    stop_at = {"call": 3}  # the first response of the 2nd prompt

    def respond(llm, prompt, *args, **kwargs):
        calls.append(prompt)
        if len(calls) == stop_at["call"]:
            raise KeyboardInterrupt
        return real_respond(llm, prompt, *args, **kwargs)

    def run(dest):
        return cai.train_constitutional(recipe, dest, register=False, progress=False)

    monkeypatch.setattr(cai, "respond", respond)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "a")
    [run_dir] = list((tmp_path / "a" / ".twin" / "runs").iterdir())
    first = [json.loads(x) for x in (run_dir / "preferences.jsonl").read_text().splitlines()]
    assert len(first) == 1

    stop_at["call"] = None
    calls.clear()
    result = run(tmp_path / "a")
    assert result.run_dir == run_dir and result.card["resumed_rows"] == {"preferences.jsonl": 1}
    assert result.card["metrics"]["preference_pairs"] >= 1 and result.card["metrics"]["dpo_steps"] >= 1
    resumed = [json.loads(x) for x in (run_dir / "preferences.jsonl").read_text().splitlines()]
    resumed_calls = list(calls)
    run(tmp_path / "b")
    [straight_dir] = list((tmp_path / "b" / ".twin" / "runs").iterdir())
    straight = [json.loads(x) for x in (straight_dir / "preferences.jsonl").read_text().splitlines()]
    assert resumed == straight and len(straight) == 3 and first == straight[:1]
    # the resumed run sampled a pair for each of the two other prompts only
    assert resumed_calls == [straight[1]["prompt"]] * 2 + [straight[2]["prompt"]] * 2
