"""Model surgery on the packaged SmolLM2: the new models load, generate with a KV cache, train one step,
have the right layer count, and their layers are exact copies of the base layers they name."""

from __future__ import annotations

import json

import pytest

from llmtwin.errors import TwinError
from llmtwin.training.surgery import middle_removed, parse_layers, run_surgery


@pytest.fixture(scope="module")
def base_state(smollm2_dir):
    from llmtwin.training.base_model import load_causal_lm

    model, tokenizer = load_causal_lm("packaged")
    return {k: v.clone() for k, v in model.state_dict().items()}, tokenizer


def _load(run_dir):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(run_dir / "model", dtype=torch.float32)


def _check_model(run_dir, layers, base_state):
    import torch

    base, tokenizer = base_state
    model = _load(run_dir)
    assert model.config.num_hidden_layers == len(layers) == len(model.model.layers)
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == list(range(len(layers)))
    # every new layer is an exact copy of the base layer it names; embeddings and final norm unchanged
    state = model.state_dict()
    for new, src in enumerate(layers):
        names = [k for k in base if k.startswith(f"model.layers.{src}.")]
        assert names
        for name in names:
            assert torch.equal(state[name.replace(f"layers.{src}.", f"layers.{new}.", 1)], base[name]), (new, src, name)
    assert torch.equal(state["model.embed_tokens.weight"], base["model.embed_tokens.weight"])
    assert torch.equal(state["model.norm.weight"], base["model.norm.weight"])

    # generation with a KV cache: incremental logits equal a full forward (wrong layer_idx breaks this)
    ids = tokenizer("The lighthouse keeper climbed the stairs", return_tensors="pt").input_ids
    model.eval()
    with torch.no_grad():
        full = model(ids, use_cache=False).logits[:, -1]
        past = model(ids[:, :-1], use_cache=True).past_key_values
        step = model(ids[:, -1:], past_key_values=past, use_cache=True).logits[:, -1]
        assert torch.allclose(full, step, atol=1e-4)
        out = model.generate(ids, max_new_tokens=5, do_sample=False, use_cache=True,
                             pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] == ids.shape[1] + 5

    # one training step: finite loss, gradients reach the first layer
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    batch = tokenizer(["a short training example", "another one, a bit longer than that"], return_tensors="pt",
                      padding=True, max_length=32, truncation=True)
    loss = model(**batch, labels=batch.input_ids).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert model.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    opt.step()


def test_downscale_removes_middle_layers(tmp_path, base_state):
    assert middle_removed(30, 10) == list(range(10)) + list(range(20, 30))
    assert middle_removed(5, 2) == [0, 1, 4]
    result = run_surgery("packaged", "downscale", remove=26, out_dir=tmp_path / "down")
    assert result.layers == [0, 1, 28, 29] and result.source_layers == 30
    assert result.params_after == result.params_before - 26 * 3_540_096  # one SmolLM2 layer: 3,540,096 params
    card = json.loads((tmp_path / "down" / "twin_model.json").read_text())
    assert (card["kind"], card["method"], card["adapter"], card["recipe"]["layers"]) == ("surgery", "downscale", False, [0, 1, 28, 29])
    assert (tmp_path / "down" / "metrics.jsonl").is_file()
    _check_model(tmp_path / "down", [0, 1, 28, 29], base_state)


def test_upscale_repeats_layers(tmp_path, base_state):
    layers = parse_layers("1,2,3,2,3,4")  # the example, 0-based
    result = run_surgery("packaged", "upscale", layers=layers, out_dir=tmp_path / "up")
    assert result.layers == [1, 2, 3, 2, 3, 4]
    card = json.loads((tmp_path / "up" / "twin_model.json").read_text())
    assert card["method"] == "upscale" and card["recipe"]["layer_indexing"] == "0-based"
    _check_model(tmp_path / "up", layers, base_state)


@pytest.mark.model
def test_bad_layer_lists_are_twin_errors(tmp_path):
    assert parse_layers("0-2, 5") == [0, 1, 2, 5]
    for text in ("a,b", "3-1", ""):
        with pytest.raises(TwinError, match="--layers"):
            parse_layers(text)
    for kwargs, text in (({"remove": 29}, "--remove"), ({"layers": [0, 30]}, "out of range"),
                         ({"layers": [2, 1]}, "increasing"), ({}, "either")):
        with pytest.raises(TwinError, match=text):
            run_surgery("packaged", "downscale", out_dir=tmp_path / "x", **kwargs)


@pytest.mark.model
def test_cli_downscale_into_a_project_registers_it(tmp_path, twin_cli):
    twin_cli("init", tmp_path / "proj", check=True)
    proc = twin_cli("model", "downscale", "--keep-layers", "0,29", "--json", cwd=tmp_path / "proj", check=True)
    info = json.loads(proc.stdout)
    run_dir = tmp_path / "proj" / ".twin" / "runs" / info["run_dir"].rsplit("/", 1)[-1]
    assert info["layers"] == [0, 29] and (run_dir / "model" / "config.json").is_file()
    assert info["registry"]["ref"].endswith("@candidate")
    # a registered model is a base too; its card names the ref (lineage)
    proc = twin_cli("model", "upscale", "--base", info["registry"]["ref"], "--layers", "0,1,1", "--json",
                    cwd=tmp_path / "proj", check=True)
    up = json.loads(proc.stdout)
    assert up["layers"] == [0, 1, 1] and up["source_layers"] == 2 and up["base"] == info["registry"]["ref"]
    outside = twin_cli("model", "upscale", "--layers", "0,40", "--out", tmp_path / "o", cwd=tmp_path)
    assert outside.returncode == 2 and "out of range" in outside.stderr
