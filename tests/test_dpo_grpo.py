"""DPO and GRPO on the packaged SmolLM2 with LoRA: tiny runs (1–3 steps, ≤ 64 tokens), real TRL trainers."""

from __future__ import annotations

import gc
import json

import pytest

from llmtwin.errors import TwinError

PAIRS = [
    {"prompt": "What colour is the sky on a clear day?", "chosen": "Blue.",
     "rejected": "The sky is made of green cheese and it is very far away from here."},
    {"prompt": "Say hello.", "chosen": "Hello!", "rejected": "No, I will not."},
]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_read_pairs_reports_bad_lines(tmp_path):
    from llmtwin.training.dpo import read_pairs

    path = tmp_path / "p.jsonl"
    path.write_text(
        json.dumps(PAIRS[0]) + "\n"
        + '{"prompt": "x", "chosen": "a"}\n'  # line 2: no rejected
        + "not json\n"  # line 3
        + json.dumps({"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}],
                      "rejected": [{"role": "assistant", "content": "b"}]}) + "\n"
        + json.dumps({"prompt": "q", "chosen": "same", "rejected": "same"}) + "\n",  # line 5
        encoding="utf-8",
    )
    rows, bad = read_pairs(path)
    assert len(rows) == 2 and rows[0]["chosen"] == [{"role": "assistant", "content": "Blue."}]
    assert [b.split(":")[1] for b in bad] == ["2", "3", "5"] and "rejected: missing" in bad[0]


@pytest.mark.model
def test_dpo_reference_is_the_adapter_off_base(tmp_path):
    """No second model: TRL's ref_model stays None and only one causal-LM instance exists."""
    from llmtwin.training.base_model import load_causal_lm
    from llmtwin.training.dpo import dpo_trainer, lora_model
    from llmtwin.training.recipe_pref import DPORecipe

    recipe = DPORecipe(r=2, alpha=4, max_len=48, batch_size=2, max_steps=1)
    base, tok = load_causal_lm("packaged")
    model = lora_model(recipe, base)
    from llmtwin.training.dpo import read_pairs

    rows, _ = read_pairs(_write(tmp_path / "p.jsonl", PAIRS))
    gc.collect()
    before = sum(1 for o in gc.get_objects() if type(o).__name__ == "LlamaForCausalLM")
    trainer = dpo_trainer(recipe, model, tok, rows, [], tmp_path / "ck", [])
    gc.collect()
    after = sum(1 for o in gc.get_objects() if type(o).__name__ == "LlamaForCausalLM")
    assert trainer.ref_model is None
    assert before == after


@pytest.mark.model
def test_dpo_one_step_logs_margins_matches_hand_logps_and_registers(tmp_path):
    from llmtwin.training.base_model import load_causal_lm
    from llmtwin.training.dpo import pair_logps, read_pairs, train_dpo
    from llmtwin.training.recipe_pref import DPORecipe

    pairs = _write(tmp_path / "pairs.jsonl", PAIRS)
    recipe = DPORecipe(dataset=str(pairs), validation=str(pairs), r=4, alpha=8, max_len=64, batch_size=2,
                       max_steps=1, lr=1e-3, beta=0.1)
    result = train_dpo(recipe, tmp_path, progress=False)
    run = result.run_dir
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    step1 = next(r for r in rows if "rewards/margins" in r)
    assert {"rewards/accuracies", "rewards/chosen", "rewards/rejected", "logps/chosen", "loss"} <= set(step1)
    assert step1["loss"] == pytest.approx(0.6931, abs=1e-3)  # policy == reference at step 1: −log σ(0)

    # hand check (DPO padding bugs): TRL's batch-mean summed log-probs equal ours, one unpadded sequence at a time
    base, tok = load_causal_lm("packaged")
    mine = pair_logps(base, tok, read_pairs(pairs)[0], 64)
    assert step1["logps/chosen"] == pytest.approx(sum(c for c, _ in mine) / 2, abs=2e-3)
    assert step1["logps/rejected"] == pytest.approx(sum(r for _, r in mine) / 2, abs=2e-3)

    card = json.loads((run / "twin_model.json").read_text())
    assert card["kind"] == "dpo" and card["method"] == "dpo" and card["adapter"] is True
    assert card["datasets"]["train"].startswith("sha256:")
    m = card["metrics"]
    assert m["heldout_reward_margin_before"] == 0.0 and m["heldout_reward_accuracy_before"] == 0.0
    assert m["heldout_reward_margin_after"] > 0 and m["heldout_reward_accuracy_after"] == 1.0  # one step learned
    assert m["heldout_logp_margin_after"] > m["heldout_logp_margin_before"]
    assert (run / "model" / "adapter_config.json").is_file()
    assert result.registry is not None and result.registry["ref"] == "twin-dpo@candidate", result.registry_note


def _kill_after_step_2(monkeypatch):
    """Make the DPO/GRPO trainers raise KeyboardInterrupt at the end of step 2 (before its checkpoint
    is saved); returns the real scalar_callbacks, to put back for the resumed run."""
    from transformers import TrainerCallback

    from llmtwin.training import dpo

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 2:
                raise KeyboardInterrupt

    plain = dpo.scalar_callbacks
    monkeypatch.setattr(dpo, "scalar_callbacks", lambda *a, **k: plain(*a, **k) + [Kill()])
    return plain


@pytest.mark.model
def test_dpo_interrupted_run_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    """Killed after step 2 (checkpoint at step 1): the same call again resumes at step 1 and ends at 3,
    with one metrics row per step."""
    from llmtwin.training import dpo
    from llmtwin.training.recipe_pref import DPORecipe

    pairs = _write(tmp_path / "pairs.jsonl", PAIRS)
    recipe = DPORecipe(dataset=str(pairs), validation=str(pairs), r=2, alpha=4, max_len=48, batch_size=2,
                       max_steps=3, save_steps=1, lr=1e-3)

    plain = _kill_after_step_2(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        dpo.train_dpo(recipe, tmp_path, progress=False, register=False)
    [run] = list((tmp_path / ".twin" / "runs").iterdir())
    assert not (run / "twin_model.json").exists()
    assert [c.name for c in (run / "checkpoints").glob("checkpoint-*")] == ["checkpoint-1"]

    monkeypatch.setattr(dpo, "scalar_callbacks", plain)
    result = dpo.train_dpo(recipe, tmp_path, progress=False, register=False)
    assert result.run_dir == run and result.resumed_from == 1
    assert result.card["resumed_from_step"] == 1 and result.card["metrics"]["steps"] == 3
    losses = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert losses == [1, 2, 3]
    assert not (run / "checkpoints").exists() and (run / "model" / "adapter_config.json").is_file()


def test_reward_book_counts_zero_std_groups():
    from llmtwin.training.grpo import RewardBook

    book = RewardBook(["exact", "regex"], [1.0, 0.5])
    book.batch = {"prompts": ["a", "a", "b", "b"], "completions": ["1", "2", "3", "4"],
                  "scores": {"exact": [1, 0, 0, 0], "regex": [0, 1, 1, 1]}}
    done = book.close_step()  # group a: totals 1.0 vs 0.5 (signal); group b: 0.5, 0.5 (none)
    assert done["totals"] == [1.0, 0.5, 0.5, 0.5]
    assert (book.groups, book.zero_std_groups, book.steps_all_zero_std) == (2, 1, 0)
    book.batch = {"prompts": ["c", "c"], "completions": ["x", "y"], "scores": {"exact": [0, 0], "regex": [0, 0]}}
    book.close_step()
    assert (book.groups, book.zero_std_groups, book.steps_all_zero_std) == (3, 2, 1)


@pytest.mark.model
def test_grpo_kl_stop_samples_and_zero_std_report(tmp_path):
    from llmtwin.training.grpo import train_grpo
    from llmtwin.training.recipe_pref import GRPORecipe

    rows = [{"prompt": f"What is {a} plus {b}? Reply with just the number.", "answer": str(a + b)}
            for a, b in [(2, 3), (4, 4), (1, 6)]]
    prompts = _write(tmp_path / "prompts.jsonl", rows)
    recipe = GRPORecipe(prompts=str(prompts), reward=["exact", "regex:^\\d+"], r=4, alpha=8, num_generations=2,
                        prompts_per_step=1, max_new_tokens=8, max_steps=4, lr=1e-3, beta=0.04, kl_stop=1e-7,
                        sample_every=1)
    result = train_grpo(recipe, tmp_path, register=False, progress=False)
    run, card = result.run_dir, result.card
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [s for s in steps if "reward" in s]
    assert all("kl" in s and "frac_reward_zero_std" in s for s in steps)
    assert steps[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # policy == base before the first update
    # the KL guard stopped training at the first step whose KL exceeded the bound, before max_steps
    assert card["guard"]["kl_stopped"] is True and card["metrics"]["steps"] < 4
    assert card["guard"]["kl_at_stop"] > 1e-7 and card["guard"]["kl_stop_step"] == card["metrics"]["steps"]
    assert [c["step"] for c in card["reward_vs_kl"]] == [s["step"] for s in steps]
    # our zero-std group count agrees with TRL's logged fraction (one group per step here)
    assert card["metrics"]["groups"] == len(steps)
    assert card["metrics"]["zero_std_groups"] == round(sum(s["frac_reward_zero_std"] for s in steps))
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert samples and samples[0]["step"] == 1 and set(samples[0]["rewards"]) == {"exact", "regex"}
    assert (run / "model" / "adapter_config.json").is_file() and card["kind"] == "grpo"


@pytest.mark.model
def test_grpo_interrupted_run_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    from llmtwin.training import dpo
    from llmtwin.training.grpo import train_grpo
    from llmtwin.training.recipe_pref import GRPORecipe

    rows = [{"prompt": f"What is {a} plus {b}? Reply with just the number.", "answer": str(a + b)}
            for a, b in [(2, 3), (4, 4), (1, 6)]]
    recipe = GRPORecipe(prompts=str(_write(tmp_path / "prompts.jsonl", rows)), reward=["exact"], r=2, alpha=4,
                        num_generations=2, prompts_per_step=1, max_new_tokens=4, max_steps=3, save_steps=1,
                        sample_every=1)

    plain = _kill_after_step_2(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train_grpo(recipe, tmp_path, register=False, progress=False)
    [run] = list((tmp_path / ".twin" / "runs").iterdir())
    assert [c.name for c in (run / "checkpoints").glob("checkpoint-*")] == ["checkpoint-1"]

    monkeypatch.setattr(dpo, "scalar_callbacks", plain)
    result = train_grpo(recipe, tmp_path, register=False, progress=False)
    assert result.run_dir == run and result.resumed_from == 1 and result.card["metrics"]["steps"] == 3
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if "reward" in json.loads(line)]
    assert steps == [1, 2, 3] and [c["step"] for c in result.card["reward_vs_kl"]] == [1, 2, 3]
    assert not (run / "checkpoints").exists()


def test_grpo_recipe_and_reward_columns_are_checked(tmp_path):
    from llmtwin.training.grpo import train_grpo
    from llmtwin.training.recipe_pref import GRPORecipe, build_pref_recipe

    with pytest.raises(TwinError, match="reward_weights"):
        build_pref_recipe("grpo", fields={"reward": ["exact"], "reward_weights": [1.0, 2.0]})
    with pytest.raises(TwinError, match="unknown grpo recipe field"):
        build_pref_recipe("grpo", overrides=["betta=0.1"])
    prompts = _write(tmp_path / "p.jsonl", [{"prompt": "hi"}])
    with pytest.raises(TwinError, match="needs a `answer` field"):
        train_grpo(GRPORecipe(prompts=str(prompts), reward=["exact"]), tmp_path, register=False, progress=False)


def test_cli_commands_and_bad_recipe_exit_2(tmp_path, twin_cli):
    twin_cli("init", str(tmp_path), check=True)
    proc = twin_cli("train", "dpo", "--set", "betta=1", cwd=tmp_path)
    assert proc.returncode == 2 and "unknown dpo recipe field 'betta'" in proc.stderr
    proc = twin_cli("train", "grpo", "--reward", "exact", "--prompts", str(tmp_path / "missing.jsonl"), cwd=tmp_path)
    assert proc.returncode == 2 and "missing.jsonl" in proc.stderr
    help_text = twin_cli("train", "grpo", "--help", cwd=tmp_path, check=True).stdout
    assert "--kl-stop" in help_text and "--num-generations" in help_text
