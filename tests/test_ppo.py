"""PPO and the reward model end to end on the packaged SmolLM2 (LoRA), tiny sizes: real runs, real registry."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads are ~10× slower on a busy machine

import json
import math
from pathlib import Path

import pytest

from llmtwin.config import TwinConfig
from llmtwin.errors import TwinError
from llmtwin.project import init_project

PROMPTS = ["Name a colour.", "What is 2+2?", "Say hello.", "Name a fruit."]


def _prompts_file(root: Path) -> Path:
    path = root / "prompts.jsonl"
    lines = [json.dumps({"prompt": [{"role": "user", "content": q}]}) for q in PROMPTS[:3]]
    lines.append(json.dumps(PROMPTS[3]))  # a bare string is a prompt too
    lines.append('{"prompt": 5}')  # line 5: bad, skipped and reported
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def short_reward(prompts, completions, extras):
    """1.0 for an answer of at most four words (a verifiable toy reward)."""
    return [1.0 if len(c.split()) <= 4 else 0.0 for c in completions]


@pytest.fixture(scope="module")
def ppo_run(tmp_path_factory, smollm2_dir):
    from llmtwin.training.ppo import train_ppo
    from llmtwin.training.recipe_rl import PPORecipe

    root = tmp_path_factory.mktemp("ppo")
    init_project(root)
    recipe = PPORecipe(prompts=str(_prompts_file(root)), steps=2, batch_size=2, minibatch_size=2, ppo_epochs=2,
                       max_new_tokens=8, r=4, alpha=8, lr=5e-4, sample_every=1, seed=0)
    return train_ppo(recipe, root, reward=short_reward, config=TwinConfig())


def test_ppo_logs_each_step_with_zero_kl_at_the_start(ppo_run):
    rows = [json.loads(x) for x in (ppo_run.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("loss", "reward", "kl", "entropy", "value_loss", "policy_loss", "clipfrac", "approx_kl"):
        assert all(isinstance(r[key], float) and math.isfinite(r[key]) for r in rows), key
    # the fresh adapter's B matrices are zero: the policy is the reference, so KL is exactly 0
    assert abs(rows[0]["kl"]) < 1e-6
    assert rows[0]["entropy"] > 0
    assert all(0.0 <= r["reward"] <= 1.0 for r in rows)
    samples = [json.loads(x) for x in (ppo_run.run_dir / "samples.jsonl").read_text().splitlines()]
    assert {s["step"] for s in samples} == {1, 2} and all(isinstance(s["completion"], str) for s in samples)
    assert ppo_run.bad_lines and ppo_run.bad_lines[0].endswith("prompts.jsonl:5: prompt: expected a non-empty string or list of messages")


def test_ppo_run_dir_follows_the_contract_and_the_adapter_moved(ppo_run):
    import torch
    from safetensors.torch import load_file

    card = json.loads((ppo_run.run_dir / "twin_model.json").read_text())
    assert card["kind"] == "ppo" and card["method"] == "ppo" and card["adapter"] is True
    assert card["base"] == "packaged" and Path(card["base_dir"]).is_dir()
    assert card["datasets"]["train"].startswith("sha256:") and card["metrics"]["steps"] == 2
    assert card["recipe"]["max_new_tokens"] == 8 and card["stopped"] == "steps"
    model = ppo_run.run_dir / "model"
    assert (model / "adapter_config.json").is_file() and (model / "tokenizer.json").is_file()
    weights = load_file(str(model / "adapter_model.safetensors"))
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and max(float(v.abs().max()) for v in lora_b) > 0  # starts at zero; training moved it
    head = load_file(str(model / "value_head.safetensors"))
    assert float(head["weight"].abs().sum() + head["bias"].abs().sum()) > 0  # starts at zero too
    # registered with its lineage
    assert ppo_run.registry and ppo_run.registry["ref"] == "twin-ppo@candidate"
    # the saved policy loads back with its value head
    from llmtwin.training.value_head import PolicyWithValue

    policy, _ = PolicyWithValue.load(model, "packaged")
    assert torch.equal(policy.value_head.weight.detach(), head["weight"])


def test_ppo_kl_bound_stops_and_rolls_back(tmp_path, smollm2_dir):
    from safetensors.torch import load_file

    from llmtwin.training.ppo import train_ppo
    from llmtwin.training.recipe_rl import PPORecipe

    recipe = PPORecipe(prompts=str(_prompts_file(tmp_path)), steps=3, batch_size=2, minibatch_size=2, ppo_epochs=1,
                       max_new_tokens=4, r=4, alpha=8, lr=5e-3, kl_estimator="k3", kl_stop=1e-7, seed=0)
    result = train_ppo(recipe, tmp_path, reward=short_reward, register=False)
    rows = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    # step 1 measures the initial policy (KL 0, within the bound); step 2 measures the updated one (k3 > 0)
    assert result.stopped == "kl" and [r["step"] for r in rows] == [1, 2] and rows[1]["kl_stop"] is True
    assert rows[1]["kl"] > 1e-7
    # rolled back to the last policy measured within the bound: the initial one (B = 0)
    weights = load_file(str(result.run_dir / "model" / "adapter_model.safetensors"))
    assert all(float(v.abs().max()) == 0.0 for k, v in weights.items() if "lora_B" in k)


def test_ppo_recipe_errors_name_the_field(tmp_path):
    from llmtwin.training.recipe_rl import build_rl_recipe

    with pytest.raises(TwinError, match="minibatch_size 8 > batch_size 4"):
        build_rl_recipe("ppo", fields={"batch_size": 4, "minibatch_size": 8})
    with pytest.raises(TwinError, match="unknown ppo recipe field 'betta'"):
        build_rl_recipe("ppo", overrides=["betta=0.1"])
    bad = tmp_path / "r.yaml"
    bad.write_text("kl_stop: -1\n")
    with pytest.raises(TwinError, match=r"r\.yaml: kl_stop"):
        build_rl_recipe("ppo", path=bad)


# ---------------------------------------------------------------- reward model

PAIRS = [
    ("What is the capital of France?", "The capital of France is Paris.", "I don't know."),
    ("How many legs does a spider have?", "A spider has eight legs.", "Why do you want to know?"),
    ("What colour is the sky on a clear day?", "It is blue.", "Look it up yourself."),
    ("What is 3 times 4?", "3 times 4 is 12.", "No idea."),
    ("Name a primary colour.", "Red is a primary colour.", "I can't help with that."),
    ("What do bees make?", "Bees make honey.", "Not telling you."),
]


def _pairs_file(path: Path, rows) -> Path:
    lines = [json.dumps({"prompt": [{"role": "user", "content": p}], "chosen": [{"role": "assistant", "content": c}],
                         "rejected": [{"role": "assistant", "content": r}], "source": "synthetic"}) for p, c, r in rows]
    lines.insert(1, json.dumps({"prompt": "x", "chosen": "same", "rejected": "same"}))  # line 2: bad
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory, smollm2_dir):
    from llmtwin.training.recipe_rl import RewardRecipe
    from llmtwin.training.reward_model import train_reward

    root = tmp_path_factory.mktemp("rm")
    config = TwinConfig(registry={"artifacts": "reference"})
    init_project(root, config)
    train = _pairs_file(root / "train.jsonl", PAIRS[:4])
    val = _pairs_file(root / "val.jsonl", PAIRS[4:])
    recipe = RewardRecipe(dataset=str(train), validation=str(val), r=4, alpha=8, max_len=64, batch_size=2, max_steps=2)
    return root, train_reward(recipe, root, config=config)


def test_pair_loss_by_hand():
    import torch

    from llmtwin.training.reward_model import pair_loss

    # −log σ(1 − 0) = log(1 + e^−1) = 0.31326168751822286; −log σ(0 − 2) = log(1 + e^2) = 2.1269280110429727
    loss = pair_loss(torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 2.0], dtype=torch.float64))
    assert abs(float(loss) - (0.31326168751822286 + 2.1269280110429727) / 2) < 1e-6


def test_reward_model_trains_scores_and_registers(reward_run):
    from llmtwin.training.reward_model import RewardModel

    root, result = reward_run
    card = json.loads((result.run_dir / "twin_model.json").read_text())
    assert card["kind"] == "reward" and card["method"] == "reward" and card["adapter"] is False
    m = card["metrics"]
    assert m["steps"] == 2 and math.isfinite(m["final_train_loss"])
    assert 0.0 <= m["eval_accuracy"] <= 1.0 and m["eval_pairs"] == 2
    assert (result.run_dir / "model" / "config.json").is_file()  # LoRA merged: a plain HF dir
    assert not (result.run_dir / "model" / "adapter_config.json").exists()
    assert result.bad_lines == [f"{root / 'train.jsonl'}:2: chosen and rejected are the same text",
                                f"{root / 'val.jsonl'}:2: chosen and rejected are the same text"]
    rows = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    assert "eval_accuracy" in rows[0] and "eval_accuracy" in rows[-1]  # before and after

    rm = RewardModel.load(result.run_dir)
    one = rm.score("What is the capital of France?", "Paris.")
    assert isinstance(one, float) and math.isfinite(one)
    # the score reads the sequence's own last token: padding next to a longer answer changes nothing
    batch = rm.score(["What is the capital of France?"] * 2, ["Paris.", "Paris is the capital and largest city of France."])
    assert abs(batch[0] - one) < 1e-4
    acc = rm.accuracy([])
    assert acc["pairs"] == 0
    # registered (alias candidate) and loadable by its registry ref
    assert result.registry["ref"] == "twin-reward@candidate"
    by_ref = RewardModel.load("twin-reward@candidate", project_root=root)
    assert abs(by_ref.score("What is the capital of France?", "Paris.") - one) < 1e-5


def test_reward_score_cli(reward_run, twin_cli):
    root, result = reward_run
    proc = twin_cli("train", "reward-score", "--model", result.run_dir, "--prompt", "What do bees make?",
                    "--completion", "Bees make honey.", "--completion", "Not telling you.", "--json", cwd=root, check=True)
    scores = json.loads(proc.stdout)
    assert [s["completion"] for s in scores] == ["Bees make honey.", "Not telling you."]
    assert all(isinstance(s["score"], float) for s in scores)
    bad = twin_cli("train", "reward", "--set", "nonsense=1", cwd=root)
    assert bad.returncode == 2 and "unknown reward recipe field 'nonsense'" in bad.stderr


def test_constitutional_judge_with_a_reward_model(reward_run):
    """CAI's judge can be a reward model: P(a better) = σ(r_a − r_b), no order to be biased by."""
    from llmtwin.training.constitutional import Principle, judge, score_revisions
    from llmtwin.training.reward_model import RewardModel

    _, result = reward_run
    rm = RewardModel.load(result.run_dir)
    principle = Principle(name="helpful", critique="Identify what is unhelpful.", revision="Rewrite it to help.")
    prompt, a, b = "What do bees make?", "Bees make honey.", "Not telling you."
    verdict, detail = judge(None, prompt, a, b, principle, reward_model=rm)
    r_a, r_b = rm.score([prompt, prompt], [a, b])
    assert detail["method"] == "reward_model"
    assert detail["p_first"] == pytest.approx(1 / (1 + math.exp(r_b - r_a)), abs=1e-4)
    assert verdict == (1 if r_a > r_b else -1)
    swapped, other = judge(None, prompt, b, a, principle, reward_model=rm)
    assert other["p_first"] == pytest.approx(1 - detail["p_first"], abs=1e-4) and swapped == -verdict
    # the revisions report: the reward model decides, the LLM judge is reported beside it when there is one
    rows = [{"prompt": prompt, "original": b, "revision": a, "rounds": [{"principle": "helpful"}]},
            {"prompt": prompt, "original": a, "revision": a, "rounds": [{"principle": "helpful"}]}]
    import random

    from llmtwin.training.constitutional import Constitution

    report = score_revisions(None, rows, Constitution(principles=[principle]), random.Random(0), reward_model=rm)
    assert report["judge"] == "reward_model" and report["n"] == 2 and report["judged"] == 1
    assert report["tie_rate"] == 0.5 and report["win_rate"] + report["loss_rate"] == 0.5
    assert report["mean_p_revision"] == pytest.approx(detail["p_first"], abs=1e-4)


def test_reward_model_interrupted_run_resumes_where_it_stopped(tmp_path, smollm2_dir):
    """Killed during step 3 (checkpoint at step 2): the same call again continues at step 3 with the
    checkpoint's weights, optimizer and data order, and ends exactly as an uninterrupted run."""
    from llmtwin.training.recipe_rl import RewardRecipe
    from llmtwin.training.reward_model import train_reward

    train = _pairs_file(tmp_path / "train.jsonl", PAIRS)
    recipe = RewardRecipe(dataset=str(train), validation_fraction=0.0, r=2, alpha=4, max_len=48, batch_size=2,
                          max_steps=4, save_steps=2)

    def kill(step, steps, row):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_reward(recipe, tmp_path / "a", register=False, on_step=kill)
    [run] = list((tmp_path / "a" / ".twin" / "runs").iterdir())
    assert [c.name for c in (run / "checkpoints").iterdir()] == ["checkpoint-2"]
    resumed = train_reward(recipe, tmp_path / "a", register=False)
    assert resumed.run_dir == run and resumed.resumed_from == 2 and resumed.card["resumed_from_step"] == 2
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4] and not (run / "checkpoints").exists()

    whole = train_reward(recipe, tmp_path / "b", register=False)
    straight = [json.loads(x) for x in (whole.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows if "loss" in r] == pytest.approx([r["loss"] for r in straight if "loss" in r], abs=1e-5)



def test_ppo_interrupted_run_resumes_where_it_stopped(tmp_path, smollm2_dir):
    """Killed after step 2's checkpoint: the same call again continues at step 3 and ends with the
    same per-step rewards and losses as an uninterrupted run (same rollouts, same updates)."""
    from llmtwin.training.ppo import train_ppo
    from llmtwin.training.recipe_rl import PPORecipe

    recipe = PPORecipe(prompts=str(_prompts_file(tmp_path)), steps=3, batch_size=2, minibatch_size=2, ppo_epochs=1,
                       max_new_tokens=6, r=2, alpha=4, lr=5e-4, sample_every=1, save_steps=1, seed=0)

    def kill(step, steps, row):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_ppo(recipe, tmp_path / "a", reward=short_reward, register=False, on_step=kill)
    [run] = list((tmp_path / "a" / ".twin" / "runs").iterdir())
    assert [c.name for c in (run / "checkpoints").glob("checkpoint-*")] == ["checkpoint-2"]  # older ones removed
    resumed = train_ppo(recipe, tmp_path / "a", reward=short_reward, register=False)
    assert resumed.run_dir == run and resumed.resumed_from == 2 and resumed.card["resumed_from_step"] == 2
    assert resumed.card["metrics"]["steps"] == 3 and not (run / "checkpoints").exists()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert sorted({json.loads(x)["step"] for x in (run / "samples.jsonl").read_text().splitlines()}) == [1, 2, 3]

    whole = train_ppo(recipe, tmp_path / "b", reward=short_reward, register=False)
    straight = [json.loads(x) for x in (whole.run_dir / "metrics.jsonl").read_text().splitlines()]
    for key in ("reward", "loss", "kl"):
        assert [r[key] for r in rows] == pytest.approx([r[key] for r in straight], abs=1e-4), key
