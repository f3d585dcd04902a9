"""`twin estimate` against hand-computed values: bytes per dtype, 16 B/param Adam, the ZeRO paper's table,
LoRA counts from SmolLM2's config (and from PEFT itself), 6·N·D and 20·N."""

from __future__ import annotations

import json

import pytest

from llmtwin.errors import TwinError
from llmtwin.training.estimate import (
    ModelShape,
    activation_bytes,
    estimate,
    estimate_compute,
    estimate_memory,
    kv_cache_bytes,
    logits_bytes,
    lora_params,
    model_shape,
    safetensors_params,
    shape_from_config,
    shape_from_params,
)

SEVEN_B = shape_from_params(7e9)
# SmolLM2-135M: hidden 576, 30 layers, 9 heads of 64, 3 kv heads, MLP 1536, vocab 49152, tied embeddings.
SMOL = ModelShape(params=134_515_008, layers=30, hidden=576, heads=9, kv_heads=3, head_dim=64,
                  intermediate=1536, vocab=49152, tied_embeddings=True)


def _states(m) -> int:
    return m.weights + m.gradients + m.optimizer


def test_weights_per_dtype_for_7b():
    result = estimate(SEVEN_B, overhead=0)
    assert result.inference_weights == {"fp32": 28_000_000_000, "fp16": 14_000_000_000, "bf16": 14_000_000_000,
                                        "int8": 7_000_000_000, "int4": 3_500_000_000}


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_full_training_with_adam_is_16_bytes_per_param(dtype):
    m = estimate_memory(SEVEN_B, dtype=dtype, overhead=0)
    assert _states(m) == 16 * 7_000_000_000
    # fp32: 4 + 4 + 8; mixed precision: 2 + 2 + 12 (fp32 master copy, m, v)
    assert m.optimizer == (8 if dtype == "fp32" else 12) * 7_000_000_000


def test_zero_stages_match_the_zero_paper_table():
    # Rajbhandari et al. 2020, Fig. 1: Ψ = 7.5B, K = 12, N_d = 64 → 120 GB, 31.4 GB, 16.6 GB, 1.88 GB per device.
    shape = shape_from_params(7.5e9)
    expected = {0: 120.0, 1: 31.41, 2: 16.64, 3: 1.875}
    for stage, gb in expected.items():
        m = estimate_memory(shape, dtype="fp16", gpus=64, zero=stage, overhead=0)
        assert _states(m) / 1e9 == pytest.approx(gb, abs=0.01), stage
    # the ZeRO-3 gather of two layers is counted apart, FSDP full sharding is stage 3
    z3 = estimate_memory(shape, dtype="bf16", gpus=64, zero=3, overhead=0)
    assert z3.zero3_gather == 2 * shape.layer_params * 2
    assert estimate_memory(shape, dtype="bf16", gpus=64, fsdp=True, overhead=0) == z3
    # DDP over 8 devices keeps everything on each
    assert _states(estimate_memory(shape, dtype="bf16", gpus=8, zero=0, overhead=0)) == 16 * 7_500_000_000


def test_lora_counts_by_hand_for_smollm2():
    # per layer, q: r·(576 + 576), v: r·(576 + 192); 30 layers
    assert lora_params(SMOL, 8) == 30 * (8 * (576 + 576) + 8 * (576 + 192)) == 460_800
    # all seven projections at r = 16: q, o 576+576; k, v 576+192; gate, up, down 576+1536
    assert lora_params(SMOL, 16, ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")) == \
        30 * 16 * (2 * 1152 + 2 * 768 + 3 * 2112)
    m = estimate_memory(SMOL, dtype="fp32", lora_r=8, overhead=0)
    assert m.trainable == 460_800
    assert m.weights == 134_515_008 * 4 + 460_800 * 4 and m.gradients == 460_800 * 4 and m.optimizer == 460_800 * 8
    q4 = estimate_memory(SMOL, dtype="int4", lora_r=8, overhead=0)
    assert q4.weights == int(134_515_008 * 0.5 + 460_800 * 4)
    with pytest.raises(TwinError, match="lora-r"):
        estimate_memory(SMOL, dtype="int4", overhead=0)


def test_packaged_shape_from_config_and_safetensors(smollm2_dir):
    shape = model_shape("packaged")
    assert (shape.layers, shape.hidden, shape.heads, shape.kv_heads, shape.intermediate, shape.vocab) == \
        (30, 576, 9, 3, 1536, 49152)
    assert shape.params == safetensors_params(smollm2_dir) == 134_515_008
    # the Llama formula from config.json alone gives the same count
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert shape_from_config(config).params == 134_515_008
    with pytest.raises(TwinError, match="config.json"):
        model_shape(smollm2_dir / "nowhere")


def test_lora_count_matches_peft(smollm2_dir):
    from peft import LoraConfig, get_peft_model

    from llmtwin.training.base_model import load_causal_lm

    model, _ = load_causal_lm("packaged")
    targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=list(targets), task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert trainable == lora_params(model_shape("packaged"), 4, targets)


def test_activations_logits_and_kv_cache_by_hand():
    # per token per layer: 7·576 + 2·192 + 4·1536 = 10560 elements
    assert activation_bytes(SMOL, 4, 256, 4, False) == 30 * 10560 * 1024 * 4
    # checkpointing keeps each layer's input (576 per token) plus one layer recomputed
    assert activation_bytes(SMOL, 4, 256, 4, True) == 30 * 576 * 1024 * 4 + 10560 * 1024 * 4
    assert logits_bytes(SMOL, 4, 256) == 3 * 1024 * 49152 * 4
    assert kv_cache_bytes(SMOL, 1, 2048, "fp16") == 2 * 30 * 192 * 2048 * 2
    m = estimate_memory(SMOL, dtype="fp32", batch=4, seq=256, overhead=0)
    assert m.per_device_total == sum(m.breakdown().values()) == \
        m.weights + m.gradients + m.optimizer + m.activations + m.logits
    assert m.no_overlap_total == m.weights + m.optimizer + max(m.gradients, m.activations + m.logits)


def test_compute_optimal_tokens_and_flops():
    c = estimate_compute(7_000_000_000)
    assert c.optimal_tokens == c.tokens == 140_000_000_000
    assert c.flops_6nd == c.training_flops == pytest.approx(6 * 7e9 * 1.4e11)
    c = estimate_compute(7_000_000_000, tokens=10**9, lora=True, grad_checkpointing=True, tflops=100, gpus=8)
    # LoRA: forward 2ND + input gradients 2ND; checkpointing: one more forward 2ND
    assert c.flops_6nd == pytest.approx(4.2e19) and c.training_flops == pytest.approx((4 + 2) * 7e9 * 1e9)
    assert c.seconds == pytest.approx(6 * 7e9 * 1e9 / (100e12 * 8))
    assert estimate_compute(7_000_000_000, tokens=10**9, grad_checkpointing=True).training_flops == pytest.approx(8 * 7e9 * 1e9)
    assert estimate_compute(1000, tokens=5000, tokens_per_s=100).seconds == 50


def test_approximated_shape_is_llama_like():
    s = shape_from_params(7e9)
    assert s.hidden % 128 == 0 and 28 <= s.layers <= 36 and 3900 <= s.hidden <= 4400
    assert abs(12 * s.layers * s.hidden**2 - 7e9) / 7e9 < 0.15
    with pytest.raises(TwinError, match="--params"):
        shape_from_params(12)


def test_bad_settings_are_twin_errors():
    for kwargs, text in (({"zero": 4}, "--zero"), ({"gpus": 0}, "--gpus"), ({"dtype": "fp8"}, "--dtype"),
                         ({"lora_r": 8, "lora_targets": ("qkv",)}, "--lora-targets")):
        with pytest.raises(TwinError, match=text):
            estimate_memory(SMOL, **kwargs)


@pytest.mark.model
def test_cli_json_and_table(twin_cli):
    proc = twin_cli("estimate", "--params", "7e9", "--gpus", "8", "--zero", "3", "--lora-r", "16", "--dtype", "bf16",
                    "--json", check=True)
    data = json.loads(proc.stdout)
    assert data["shape"]["params"] == 7_000_000_000 and data["training"]["zero"] == 3
    assert data["training"]["trainable"] == lora_params(SEVEN_B, 16)
    assert data["compute"]["optimal_tokens"] == 140_000_000_000
    proc = twin_cli("estimate", "--model", "packaged", "--dtype", "fp32", "--batch", "2", "--seq", "128", check=True)
    assert "peak" in proc.stdout and "0.135 B parameters" in proc.stdout and "460,800" not in proc.stdout
    bad = twin_cli("estimate", "--params", "7e9", "--zero", "5")
    assert bad.returncode == 2 and "--zero" in bad.stderr
