"""`twin estimate`: memory per device and compute of training (and serving) a model, before running it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def _mib(n: float) -> str:
    gib = n / 2**30
    return f"{gib:,.2f} GiB" if gib >= 1 else f"{n / 2**20:,.0f} MiB"


def estimate_cmd(
    params: Optional[float] = typer.Option(None, "--params", help="Parameter count, e.g. 7e9 (shape approximated)."),
    model: Optional[str] = typer.Option(None, "--model", help="'packaged' or a Hugging Face dir (exact shape)."),
    layers: Optional[int] = typer.Option(None, "--layers", help="With --params: number of layers."),
    hidden: Optional[int] = typer.Option(None, "--hidden", help="With --params: hidden size."),
    vocab: Optional[int] = typer.Option(None, "--vocab", help="With --params: vocabulary size (default 32000)."),
    dtype: str = typer.Option("bf16", "--dtype", help="fp32, fp16, bf16, int8 or int4 (int8/int4 need --lora-r)."),
    gpus: int = typer.Option(1, "--gpus", help="Devices the job is spread over."),
    zero: int = typer.Option(0, "--zero", help="ZeRO stage: 0 (DDP), 1 (optimizer), 2 (+gradients), 3 (+weights)."),
    fsdp: bool = typer.Option(False, "--fsdp", help="FSDP full sharding (same memory as --zero 3)."),
    lora_r: Optional[int] = typer.Option(None, "--lora-r", help="Train a LoRA adapter of this rank (base frozen)."),
    lora_targets: str = typer.Option("q_proj,v_proj", "--lora-targets", help="Projections LoRA wraps, or 'all'."),
    batch: int = typer.Option(1, "--batch", help="Micro-batch size per device."),
    seq: int = typer.Option(2048, "--seq", help="Sequence length in tokens."),
    tokens: Optional[float] = typer.Option(None, "--tokens", help="Training tokens D (default: 20·N, compute-optimal)."),
    grad_checkpointing: bool = typer.Option(False, "--grad-checkpointing/--no-grad-checkpointing", help="Recompute activations in backward."),
    tokens_per_s: Optional[float] = typer.Option(None, "--tokens-per-s", help="Assumed job throughput, for a time estimate."),
    tflops: Optional[float] = typer.Option(None, "--tflops", help="Assumed achieved TFLOP/s per device, for a time estimate."),
    overhead_mib: Optional[float] = typer.Option(None, "--overhead-mib", help="Framework overhead per device (default: 600, measured on CPU)."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Memory per device (weights, gradients, optimizer, activations) and FLOPs of a training setting."""
    from llmtwin.errors import TwinError
    from llmtwin.training import estimate as est

    if (params is None) == (model is None):
        raise TwinError("give either --params N (e.g. 7e9) or --model packaged|DIR")
    if model is not None:
        shape = est.model_shape(model if model == "packaged" else Path(model))
    else:
        shape = est.shape_from_params(params, layers=layers, hidden=hidden, vocab=vocab)
    targets = est.LORA_TARGETS_ALL if lora_targets == "all" else tuple(t.strip() for t in lora_targets.split(",") if t.strip())
    overhead = None if overhead_mib is None else int(overhead_mib * 2**20)
    result = est.estimate(shape, dtype=dtype, gpus=gpus, zero=zero, fsdp=fsdp, lora_r=lora_r, lora_targets=targets,
                          batch=batch, seq=seq, grad_checkpointing=grad_checkpointing,
                          tokens=None if tokens is None else int(tokens), tokens_per_s=tokens_per_s, tflops=tflops,
                          overhead=overhead)
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
        return
    _print(result)


def _print(result) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    s, m, c = result.shape, result.memory, result.compute
    console.print(f"[bold]{s.params / 1e9:.3f} B parameters[/bold] ({s.source}): {s.layers} layers, hidden {s.hidden}, "
                  f"{s.heads} heads ({s.kv_heads} kv), MLP {s.intermediate}, vocab {s.vocab}")
    how = f"LoRA r={m.lora_r} ({m.trainable:,} trainable)" if m.lora_r else "full training"
    shard = "one device" if m.gpus == 1 else f"{f'ZeRO-{m.zero}' if m.zero else 'DDP'} over {m.gpus} devices"
    console.print(f"Training memory per device: {how}, {m.dtype}, {shard}, "
                  f"batch {m.batch} × seq {m.seq}, checkpointing {'on' if m.grad_checkpointing else 'off'}")
    table = Table()
    table.add_column("part")
    table.add_column("bytes", justify="right")
    for part, value in m.breakdown().items():
        table.add_row(part, _mib(value))
    table.add_row("[bold]peak[/bold]", f"[bold]{_mib(m.per_device_total)}[/bold]")
    table.add_row("(peak without gradient/activation overlap)", _mib(m.no_overlap_total))
    console.print(table)
    console.print("Inference: weights by dtype")
    inference = Table()
    for d in result.inference_weights:
        inference.add_column(d, justify="right")
    inference.add_row(*(_mib(v) for v in result.inference_weights.values()))
    console.print(inference)
    console.print(f"KV cache for batch {m.batch} × {m.seq} tokens: {_mib(result.kv_cache)}")
    console.print(f"Compute-optimal tokens (20·N): {c.optimal_tokens:.3g}; training on D = {c.tokens:.3g} tokens: "
                  f"6·N·D = {c.flops_6nd:.3g} FLOPs" + (f" (this setting: {c.training_flops:.3g})" if c.training_flops != c.flops_6nd else ""))
    if c.seconds is not None:
        console.print(f"Time at the assumed throughput: {c.seconds / 3600:,.1f} h")
    for note in result.notes:
        console.print(f"note: {note}")
