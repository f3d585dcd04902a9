"""`twin train sft`: recipes, the completion mask token by token, every flavour for a step, packing, resume.

Tiny on purpose (seq ≤ 64, 4–6 examples, 1–3 steps, one thread: 2 contended cores run faster on one).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from llmtwin.errors import TwinError
from llmtwin.training.recipe import build_recipe


def _rows(n: int) -> list[dict]:
    return [
        {
            "prompt": [{"role": "user", "content": f"What colour is item {i}?"}],
            "completion": [{"role": "assistant", "content": f"Item {i} is blue."}],
            "id": f"q{i}", "chunk_id": f"c{i}", "kind": "qa",
        }
        for i in range(n)
    ]


@pytest.fixture
def data(tmp_path) -> Path:
    path = tmp_path / "sft.jsonl"
    lines = [json.dumps(r) for r in _rows(6)]
    lines.insert(2, '{"prompt": "not a list", "completion": []}')  # line 3: reported, skipped
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _recipe(data: Path, **fields):
    base = {"dataset": str(data), "max_seq_len": 64, "batch_size": 2, "max_steps": 1, "threads": 1,
            "save_steps": 10, "r": 4, "alpha": 8, "num_virtual_tokens": 4}
    return build_recipe("sft", fields={**base, **fields})


def _train(recipe, root: Path, **kw):
    from llmtwin.training.sft import train_sft

    return train_sft(recipe, root, register=False, progress=False, **kw)


# ---------------------------------------------------------------- recipes


def test_recipe_yaml_errors_name_file_and_field(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("method: lora\nr: 0\nmistake: 1\n", encoding="utf-8")
    with pytest.raises(TwinError) as e:
        build_recipe("sft", path)
    assert str(path) in str(e.value) and "r:" in str(e.value) and "mistake" in str(e.value)
    with pytest.raises(TwinError, match="unknown sft recipe field 'rank'"):
        build_recipe("sft", overrides=["rank=8"])
    with pytest.raises(TwinError, match="unknown sft preset"):
        build_recipe("sft", preset="nope")
    with pytest.raises(TwinError, match="packing"):
        build_recipe("sft", fields={"method": "prompt", "packing": True})
    r = build_recipe("sft", preset="lora-cpu", overrides=["r=8", "lr=1e-4", "target_modules=[q_proj, v_proj]"])
    assert (r.method, r.r, r.learning_rate(), r.target_modules, r.use_packing()) == ("lora", 8, 1e-4, ["q_proj", "v_proj"], True)
    assert build_recipe("sft", preset="prefix-cpu").use_packing() is False


def test_qlora_on_cpu_is_a_clear_error(data, tmp_path):
    with pytest.raises(TwinError, match=r"CUDA GPU with bitsandbytes.*method: lora"):
        _train(_recipe(data, method="qlora"), tmp_path)


# ---------------------------------------------------------------- the completion mask


@pytest.mark.model
def test_completion_mask_token_by_token(data, tmp_path):
    from llmtwin.training.base_model import load_causal_lm
    from llmtwin.training.sft import make_trainer

    model, tok = load_causal_lm("packaged")
    rows = _rows(2)
    recipe = _recipe(data, method="full", packing=False)
    trainer = make_trainer(recipe, model, tok, Path("."), rows, [], tmp_path / "ck", [])
    batch = trainer.data_collator([trainer.train_dataset[0], trainer.train_dataset[1]])
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.pad_token_id != tok.eos_token_id
    for b, row in enumerate(rows):
        prompt_ids = tok.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        full_ids = tok.apply_chat_template(row["prompt"] + row["completion"], tokenize=True, return_dict=True)["input_ids"]
        ids, labels, mask = batch["input_ids"][b].tolist(), batch["labels"][b].tolist(), batch["attention_mask"][b].tolist()
        n = sum(mask)
        assert ids[:n] == full_ids
        for i in range(len(ids)):
            if i < len(prompt_ids):
                assert labels[i] == -100, f"prompt token {i} {tok.decode([ids[i]])!r} is in the loss"
            elif i < n:
                assert labels[i] == ids[i], f"completion token {i} {tok.decode([ids[i]])!r} is not in the loss"
            else:
                assert labels[i] == -100 and ids[i] == tok.pad_token_id, f"padding at {i} is in the loss"
        completion = [t for t in labels if t != -100]
        assert im_end in completion  # the model learns to stop
        assert tok.decode(completion).startswith(f"Item {b} is blue.<|im_end|>")


@pytest.mark.model
def test_packing_is_padding_free_with_per_example_positions(data, tmp_path):
    from llmtwin.training.base_model import load_causal_lm
    from llmtwin.training.sft import make_trainer

    model, tok = load_causal_lm("packaged")
    recipe = _recipe(data, method="full", max_seq_len=128)  # packing on by default for full/lora
    trainer = make_trainer(recipe, model, tok, Path("."), _rows(6), [], tmp_path / "ck", [])
    assert len(trainer.train_dataset) < 6  # several examples share a row
    batch = trainer.data_collator([trainer.train_dataset[0]])
    pos, labels = batch["position_ids"][0].tolist(), batch["labels"][0].tolist()
    starts = [i for i, p in enumerate(pos) if p == 0]
    assert len(starts) >= 2 and "attention_mask" not in batch
    for s in starts:
        assert labels[s] == -100  # nothing predicted across an example boundary
    assert pos[starts[1] - 1] + 1 == starts[1] - starts[0]  # positions restart per example


# ---------------------------------------------------------------- every flavour, one step


@pytest.mark.model
def test_prompt_tuning_text_init_uses_the_base_tokenizer():
    from peft import get_peft_model

    from llmtwin.training.base_model import base_model_dir, load_causal_lm
    from llmtwin.training.sft import peft_config

    model, tok = load_causal_lm("packaged")
    recipe = build_recipe("sft", fields={"method": "prompt", "prompt_init": "text", "num_virtual_tokens": 6,
                                          "prompt_init_text": "Answer from the documents."})
    ids = tok("Answer from the documents.")["input_ids"]
    want = model.get_input_embeddings().weight[ids].detach().clone()
    peft_model = get_peft_model(model, peft_config(recipe, base_model_dir("packaged")))
    got = peft_model.prompt_encoder["default"].embedding.weight.detach()
    n = min(len(ids), 6)
    assert got.shape[0] == 6 and (got[:n] - want[:n]).abs().max().item() < 1e-6


@pytest.mark.parametrize(
    "method, extra, files",
    [
        ("full", {}, {"config.json", "model.safetensors", "tokenizer.json"}),
        ("prompt", {"prompt_init": "random"}, {"adapter_config.json", "adapter_model.safetensors"}),
        ("prompt", {"prompt_init": "text"}, {"adapter_config.json", "adapter_model.safetensors"}),
        ("prefix", {"prefix_projection": False}, {"adapter_config.json", "adapter_model.safetensors"}),
        ("prefix", {"prefix_projection": True}, {"adapter_config.json", "adapter_model.safetensors"}),
    ],
)
@pytest.mark.model
def test_each_flavour_trains_one_step(data, tmp_path, method, extra, files):
    result = _train(_recipe(data, method=method, **extra), tmp_path)
    model_files = {p.name for p in (result.run_dir / "model").iterdir()}
    assert files <= model_files
    card = json.loads((result.run_dir / "twin_model.json").read_text())
    assert (card["kind"], card["method"], card["adapter"]) == (method, "sft", method != "full")
    assert card["datasets"]["train"].startswith("sha256:")
    assert result.bad_lines and ":3:" in result.bad_lines[0]
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert rows[0]["step"] == 1 and losses and all(math.isfinite(x) and x > 0 for x in losses)
    if method == "prefix":
        adapter = json.loads((result.run_dir / "model" / "adapter_config.json").read_text())
        assert adapter["prefix_projection"] is extra["prefix_projection"]
    assert not (result.run_dir / "checkpoints").exists()


@pytest.mark.model
def test_lora_learns_with_eval_and_registers(data, tmp_path):
    """Three LoRA steps on the same tiny set: eval loss falls; the run is recorded in the registry."""
    from llmtwin.project import init_project
    from llmtwin.training.sft import train_sft

    project = init_project(tmp_path / "proj")
    recipe = _recipe(data, method="lora", max_steps=3, validation=str(data), eval_every=3, lr=3e-3, dropout=0.0)
    result = train_sft(recipe, project.root, register=True, progress=False)
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert any("eval_loss" in r for r in rows) and result.card["metrics"]["eval_loss"] < 2.0
    assert result.card["metrics"]["tokens_per_s"] > 0
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (result.run_dir / "model").iterdir()}
    assert result.registry is not None and result.registry["ref"] == "twin-sft@candidate", result.registry_note

    # the command line, continuing from the registered model (its adapter merged into the base)
    import subprocess
    import sys

    twin = Path(sys.executable).parent / "twin"
    cmd = [str(twin), "--project", str(project.root), "train", "sft", "--preset", "smoke", "--dataset", str(data),
           "--base", "twin-sft@candidate", "--max-steps", "1", "--set", "threads=1", "--set", "max_seq_len=64",
           "--name", "twin-sft-2", "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout)
    card = json.loads((Path(out["run_dir"]) / "twin_model.json").read_text())
    assert card["base"] == "twin-sft@candidate" and Path(card["base_dir"]).is_dir() and card["base_dir"] != result.card["base_dir"]
    assert out["registry"]["ref"] == "twin-sft-2@candidate" and out["metrics"]["steps"] == 1
    bad = subprocess.run([str(twin), "--project", str(project.root), "train", "sft", "--set", "r=zero"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode == 2 and "r:" in bad.stderr


# ---------------------------------------------------------------- resume after an interruption


@pytest.mark.model
def test_resume_after_interruption(data, tmp_path):
    from transformers import TrainerCallback

    class Interrupt(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            if state.global_step == 2:
                raise KeyboardInterrupt  # what Ctrl-C does, right after checkpoint-2 was written

    recipe = _recipe(data, method="lora", max_steps=3, save_steps=1)
    with pytest.raises(KeyboardInterrupt):
        _train(recipe, tmp_path, callbacks=[Interrupt()])
    run_dir = next((tmp_path / ".twin" / "runs").iterdir())
    assert not (run_dir / "twin_model.json").exists()
    assert (run_dir / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file()

    result = _train(recipe, tmp_path)  # the same command again
    assert result.run_dir == run_dir and result.resumed_from == 2
    assert result.card["metrics"]["steps"] == 3
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == [1, 2, 3]  # step 3 trained once, steps 1–2 not repeated
    with pytest.raises(TwinError, match="finished"):
        _train(recipe, tmp_path, run_name=run_dir.name)
