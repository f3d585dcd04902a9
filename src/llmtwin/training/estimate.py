"""Memory and compute estimates for training and serving a decoder LLM (`twin estimate`).

Pure arithmetic on a `ModelShape` (read from a model's config.json, or approximated from a parameter
count). Conventions (docs/estimate.md explains each):

- Bytes per value: fp32 4, fp16/bf16 2, int8 1, int4 0.5 (quantisation scales ignored, ~3 %).
- Full training with AdamW. fp32: weights 4 + gradients 4 + Adam m, v 8 = 16 B/param. Mixed precision
  (fp16/bf16): half-precision weights 2 + gradients 2 + optimizer 12 (fp32 master copy 4 + m 4 + v 4) =
  16 B/param: the ZeRO paper's 2 + 2 + K with K = 12. int8/int4 weights only train through LoRA.
- LoRA: the base is frozen in `dtype` (no gradients, no optimizer state); the adapter is kept in fp32
  (PEFT upcasts adapters) and costs 16 B per trainable parameter.
- Sharding over G devices (ZeRO, Rajbhandari et al. 2020): stage 0 (DDP) replicates everything; stage 1
  shards the optimizer state; stage 2 also the gradients; stage 3 also the weights, and each device
  gathers one layer at a time (counted as two layers of weights: the one in use and the one prefetched).
  FSDP FULL_SHARD is stage 3.
- Activations (per device, per micro-batch): saved tensors of a Llama-style layer in elements per token,
  `7·h + 2·kv + 4·i` (two RMSNorm inputs/outputs, q, k, v, attention output, o_proj input, the four
  SwiGLU tensors), times the activation width (4 B in fp32, else 2 B). Attention uses the fused SDPA
  kernel (no s×s matrix). With gradient checkpointing only each layer's input (`h`) is kept, plus one
  layer recomputed in full during backward. The loss keeps fp32 logits-sized tensors: `3·b·s·V·4` B
  (logits, log-softmax, and its gradient at the start of backward).
- Peak: `per_device_total` is the sum of every part. Backward frees activations as it makes gradients,
  so `overhead + weights + optimizer + max(gradients, activations + logits)` (`no_overlap_total`) would
  be the textbook peak, but the peak resident memory measured on this machine matched the sum within
  3 % for full fine-tuning (bench/results/estimate.md): freed activation memory stays resident.
- Overhead, measured on this machine (CPU): `CPU_FRAMEWORK_BYTES` = 450 MiB, the resident memory of a
  process after importing torch, transformers (and peft) and building the model, before its weights are
  touched (they are memory-mapped and counted under weights); training adds `TRAINING_WORKSPACE_BYTES` =
  150 MiB of working memory the parts do not itemise (autograd and optimizer temporaries, allocator
  slack), fitted on the benchmark runs. On a GPU the CUDA context plays that part: pass your own `overhead`.
- Compute: compute-optimal tokens ≈ 20·N (Hoffmann et al. 2022); training FLOPs ≈ 6·N·D (forward 2ND,
  backward 4ND); LoRA skips the weight-gradient half of backward (≈ 4·N·D); gradient checkpointing
  adds one forward (+2·N·D).
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llmtwin.errors import TwinError

BYTES_PER_VALUE = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "int8": 1.0, "int4": 0.5}
DTYPE_ALIASES = {"float32": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16", "4bit": "int4", "8bit": "int8"}
# Resident memory after imports and model construction, weights untouched (bench/results/estimate.md: 432-452 MiB).
CPU_FRAMEWORK_BYTES = 450 * 2**20
# Working memory of a training step not itemised by the parts (fitted on the same benchmark runs).
TRAINING_WORKSPACE_BYTES = 150 * 2**20
CPU_OVERHEAD_BYTES = CPU_FRAMEWORK_BYTES + TRAINING_WORKSPACE_BYTES  # the default for training
TOKENS_PER_PARAM = 20
LORA_TARGETS_DEFAULT = ("q_proj", "v_proj")
LORA_TARGETS_ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ASPECT_RATIO = 128  # hidden / layers of Llama-family models, used when only a parameter count is known
DEFAULT_VOCAB = 32000


def normalise_dtype(dtype: str) -> str:
    name = DTYPE_ALIASES.get(dtype.lower(), dtype.lower())
    if name not in BYTES_PER_VALUE:
        raise TwinError(f"--dtype {dtype!r}: expected one of {', '.join(BYTES_PER_VALUE)}")
    return name


@dataclass(frozen=True)
class ModelShape:
    """What the estimates need to know about a decoder: sizes per layer and the parameter count."""

    params: int
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied_embeddings: bool = False
    source: str = "config.json"

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    @property
    def layer_params(self) -> int:
        """Parameters of one decoder layer (from the whole count, so it holds for any architecture)."""
        return max(0, (self.params - self.embedding_params - self.hidden) // max(1, self.layers))

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each Llama-style projection in one layer."""
        h, i = self.hidden, self.intermediate
        return {"q_proj": (h, self.q_dim), "k_proj": (h, self.kv_dim), "v_proj": (h, self.kv_dim),
                "o_proj": (self.q_dim, h), "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}


def lora_params(shape: ModelShape, r: int, targets: tuple[str, ...] = LORA_TARGETS_DEFAULT) -> int:
    """Trainable LoRA parameters: r·(in + out) for each targeted projection of each layer."""
    linears = shape.linear_shapes()
    unknown = [t for t in targets if t not in linears]
    if unknown:
        raise TwinError(f"--lora-targets: unknown module(s) {', '.join(unknown)}; expected some of {', '.join(linears)}")
    if r < 1:
        raise TwinError(f"--lora-r {r}: expected a rank ≥ 1")
    return shape.layers * sum(r * (linears[t][0] + linears[t][1]) for t in targets)


def shape_from_params(params: float, layers: int | None = None, hidden: int | None = None,
                      vocab: int | None = None) -> ModelShape:
    """A Llama-like shape for a bare parameter count (documented approximation).

    N ≈ 12·L·h² (attention 4h², MLP 8h² per layer) with h/L ≈ 128 gives h = (128·N/12)^(1/3), rounded to a
    multiple of 128; L = N/(12·h²). Heads of 128 dims, no grouped-query attention, MLP width 8h/3.
    """
    n = int(params)
    if n < 1000:
        raise TwinError(f"--params {params!r}: expected a parameter count such as 7e9")
    if hidden is None:
        base = (ASPECT_RATIO * n / 12) ** (1 / 3) if layers is None else (n / (12 * layers)) ** 0.5
        hidden = max(128, round(base / 128) * 128)
    if layers is None:
        layers = max(1, round(n / (12 * hidden * hidden)))
    head_dim = min(128, hidden)
    heads = max(1, hidden // head_dim)
    return ModelShape(params=n, layers=layers, hidden=hidden, heads=heads, kv_heads=heads, head_dim=head_dim,
                      intermediate=round(8 * hidden / 3), vocab=vocab or DEFAULT_VOCAB,
                      source="parameter count (shape approximated)")


def _get(config: dict, *keys: str, default=None):
    for key in keys:
        if config.get(key) is not None:
            return config[key]
    return default


def safetensors_params(directory: Path) -> int | None:
    """Exact parameter count from the safetensors headers (no tensors are read); None if there are none."""
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for path in files:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        for name, meta in header.items():
            if name != "__metadata__":
                count = 1
                for dim in meta["shape"]:
                    count *= dim
                total += count
    return total


def shape_from_config(config: dict, params: int | None = None, source: str = "config.json") -> ModelShape:
    """A shape from a Hugging Face config dict (Llama, Mistral, Qwen, GPT-2 style keys)."""
    config = config.get("text_config", config)
    hidden = _get(config, "hidden_size", "n_embd", "d_model")
    layers = _get(config, "num_hidden_layers", "n_layer", "num_layers")
    heads = _get(config, "num_attention_heads", "n_head")
    vocab = _get(config, "vocab_size")
    if not all(isinstance(v, int) for v in (hidden, layers, heads, vocab)):
        raise TwinError(f"{source}: needs hidden_size, num_hidden_layers, num_attention_heads and vocab_size")
    kv_heads = _get(config, "num_key_value_heads", default=heads)
    head_dim = _get(config, "head_dim", default=hidden // heads)
    intermediate = _get(config, "intermediate_size", "n_inner", default=None) or 4 * hidden
    tied = bool(_get(config, "tie_word_embeddings", default=False))
    shape = ModelShape(params=0, layers=layers, hidden=hidden, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                       intermediate=intermediate, vocab=vocab, tied_embeddings=tied, source=source)
    if params is None:  # Llama-style count: projections + two norms per layer, embeddings, final norm
        per_layer = sum(a * b for a, b in shape.linear_shapes().values()) + 2 * hidden
        params = shape.embedding_params + layers * per_layer + hidden
    return ModelShape(**{**asdict(shape), "params": int(params)})


def model_shape(ref: str | Path) -> ModelShape:
    """The shape of "packaged" (SmolLM2-135M) or a local HF dir; the count from its safetensors if present."""
    from llmtwin.training.base_model import base_model_dir

    directory = base_model_dir(ref)
    path = directory / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise TwinError(f"{path}: cannot read the model config ({e})") from e
    params = safetensors_params(directory)
    return shape_from_config(config, params, source=f"{path}" + (" + safetensors" if params else ""))


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per device of one training (or inference) setting, by part; `per_device_total` is the peak."""

    dtype: str
    gpus: int
    zero: int
    lora_r: int | None
    batch: int
    seq: int
    grad_checkpointing: bool
    inference: bool
    trainable: int
    weights: int
    gradients: int
    optimizer: int
    activations: int
    logits: int
    zero3_gather: int
    overhead: int

    def breakdown(self) -> dict[str, int]:
        return {"weights": self.weights, "gradients": self.gradients, "optimizer": self.optimizer,
                "activations": self.activations, "logits": self.logits, "zero3_gather": self.zero3_gather,
                "overhead": self.overhead}

    @property
    def per_device_total(self) -> int:
        """The estimated peak: every part added up (what the measured peaks on CPU matched)."""
        return sum(self.breakdown().values())

    @property
    def no_overlap_total(self) -> int:
        """A lower estimate, if no gradient memory were ever resident next to activations."""
        return (self.overhead + self.weights + self.optimizer + self.zero3_gather
                + max(self.gradients, self.activations + self.logits))


def activation_bytes(shape: ModelShape, batch: int, seq: int, width: float, grad_checkpointing: bool) -> int:
    """Saved activations of the decoder stack for one micro-batch (see the module docstring)."""
    tokens = batch * seq
    per_layer = (7 * shape.hidden + 2 * shape.kv_dim + 4 * shape.intermediate) * tokens * width
    if grad_checkpointing:
        return int(shape.layers * shape.hidden * tokens * width + per_layer)
    return int(shape.layers * per_layer)


def logits_bytes(shape: ModelShape, batch: int, seq: int, training: bool = True) -> int:
    """fp32 logits-sized tensors of the loss: 3 in training, 1 for an inference forward."""
    return int((3 if training else 1) * batch * seq * shape.vocab * 4)


def kv_cache_bytes(shape: ModelShape, batch: int, seq: int, dtype: str = "fp16") -> int:
    """Keys and values of every layer for batch × seq tokens."""
    return int(2 * shape.layers * shape.kv_dim * batch * seq * BYTES_PER_VALUE[normalise_dtype(dtype)])


def estimate_memory(shape: ModelShape, dtype: str = "bf16", gpus: int = 1, zero: int = 0, fsdp: bool = False,
                    lora_r: int | None = None, lora_targets: tuple[str, ...] = LORA_TARGETS_DEFAULT,
                    batch: int = 1, seq: int = 2048, grad_checkpointing: bool = False, inference: bool = False,
                    overhead: int | None = None) -> MemoryEstimate:
    """Per-device bytes of training (or, with inference=True, of one forward pass) in one setting.

    `overhead` defaults to the measured CPU figures: framework + training workspace (framework alone for inference).
    """
    if overhead is None:
        overhead = CPU_FRAMEWORK_BYTES if inference else CPU_OVERHEAD_BYTES
    dtype = normalise_dtype(dtype)
    if gpus < 1:
        raise TwinError(f"--gpus {gpus}: expected ≥ 1")
    if fsdp:
        zero = 3
    if zero not in (0, 1, 2, 3):
        raise TwinError(f"--zero {zero}: expected 0 (DDP), 1, 2 or 3")
    if batch < 1 or seq < 1:
        raise TwinError(f"--batch {batch} --seq {seq}: expected positive sizes")
    n = shape.params
    width = 4.0 if dtype == "fp32" else 2.0  # activations: fp32, else half precision (also QLoRA compute)
    weight_bytes = BYTES_PER_VALUE[dtype]
    shard = lambda stage: gpus if zero >= stage else 1  # divisor of a part sharded from `stage` on

    if inference:
        act = int(activation_bytes(shape, batch, seq, width, False) / shape.layers)  # one layer alive at a time
        kv = kv_cache_bytes(shape, batch, seq, "fp32" if dtype == "fp32" else "fp16")
        return MemoryEstimate(dtype, gpus, zero, None, batch, seq, False, True, 0, int(n * weight_bytes / shard(3)),
                              0, 0, act + kv, logits_bytes(shape, batch, seq, training=False), 0, overhead)

    if lora_r is None:
        if dtype in ("int8", "int4"):
            raise TwinError(f"--dtype {dtype}: full training needs fp32, fp16 or bf16 weights; quantised bases train with --lora-r")
        trainable = n
        optimizer_per_param = 8.0 if dtype == "fp32" else 12.0  # m, v (+ fp32 master copy in mixed precision)
        weights = n * weight_bytes / shard(3)
        gradients = n * weight_bytes / shard(2)
        optimizer = n * optimizer_per_param / shard(1)
    else:
        trainable = lora_params(shape, lora_r, lora_targets)
        weights = n * weight_bytes / shard(3) + trainable * 4 / shard(3)
        gradients = trainable * 4 / shard(2)
        optimizer = trainable * 8 / shard(1)
    gather = 2 * shape.layer_params * weight_bytes if zero == 3 and gpus > 1 else 0
    return MemoryEstimate(
        dtype, gpus, zero, lora_r, batch, seq, grad_checkpointing, False, trainable,
        int(weights), int(gradients), int(optimizer),
        activation_bytes(shape, batch, seq, width, grad_checkpointing), logits_bytes(shape, batch, seq),
        int(gather), overhead,
    )


@dataclass(frozen=True)
class ComputeEstimate:
    """Tokens and FLOPs of a training run, and its time at an assumed throughput."""

    params: int
    tokens: int
    optimal_tokens: int
    flops_6nd: float
    training_flops: float
    seconds: float | None = None


def estimate_compute(params: int, tokens: int | None = None, lora: bool = False, grad_checkpointing: bool = False,
                     tokens_per_s: float | None = None, tflops: float | None = None, gpus: int = 1) -> ComputeEstimate:
    """20·N compute-optimal tokens; 6·N·D FLOPs (4·N·D with LoRA, +2·N·D with checkpointing); time if a rate is given.

    `tokens_per_s` is the whole job's rate; `tflops` is the achieved rate of one device (times `gpus`).
    """
    optimal = TOKENS_PER_PARAM * params
    d = optimal if tokens is None else int(tokens)
    factor = (4 if lora else 6) + (2 if grad_checkpointing else 0)
    flops = float(factor) * params * d
    seconds = None
    if tokens_per_s:
        seconds = d / tokens_per_s
    elif tflops:
        seconds = flops / (tflops * 1e12 * gpus)
    return ComputeEstimate(params, d, optimal, 6.0 * params * d, flops, seconds)


@dataclass(frozen=True)
class Estimate:
    """Everything `twin estimate` prints: the shape, training memory, inference weights, compute."""

    shape: ModelShape
    memory: MemoryEstimate
    inference_weights: dict[str, int]
    kv_cache: int
    compute: ComputeEstimate
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "shape": asdict(self.shape),
            "training": {**{k: v for k, v in asdict(self.memory).items()}, "breakdown": self.memory.breakdown(),
                         "per_device_total": self.memory.per_device_total, "no_overlap_total": self.memory.no_overlap_total},
            "inference_weights": self.inference_weights,
            "kv_cache": self.kv_cache,
            "compute": asdict(self.compute),
            "notes": self.notes,
        }


def estimate(shape: ModelShape, *, dtype: str = "bf16", gpus: int = 1, zero: int = 0, fsdp: bool = False,
             lora_r: int | None = None, lora_targets: tuple[str, ...] = LORA_TARGETS_DEFAULT, batch: int = 1,
             seq: int = 2048, grad_checkpointing: bool = False, tokens: int | None = None,
             tokens_per_s: float | None = None, tflops: float | None = None,
             overhead: int | None = None) -> Estimate:
    """The full estimate for one setting (the library side of `twin estimate`)."""
    memory = estimate_memory(shape, dtype, gpus, zero, fsdp, lora_r, lora_targets, batch, seq, grad_checkpointing,
                             overhead=overhead)
    compute = estimate_compute(shape.params, tokens, lora_r is not None, grad_checkpointing, tokens_per_s, tflops, gpus)
    notes = []
    if shape.source.startswith("parameter count"):
        notes.append(f"shape approximated from the parameter count: {shape.layers} layers, hidden {shape.hidden}, "
                     f"vocab {shape.vocab} (give --model DIR for exact activations)")
    if gpus > 1 and zero == 0:
        notes.append("DDP (zero 0): every device holds the whole model, gradients and optimizer state")
    return Estimate(shape, memory, {d: int(shape.params * b) for d, b in BYTES_PER_VALUE.items()},
                    kv_cache_bytes(shape, batch, seq, "fp32" if memory.dtype == "fp32" else "fp16"), compute, notes)
