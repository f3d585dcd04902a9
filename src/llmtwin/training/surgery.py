"""Model surgery on the decoder stack: downscale (drop layers) and depth up-scaling (repeat layers).

A new model is the base's embeddings, final norm and head around a new list of decoder layers, each a
copy of a base layer named by its 0-based index. `[0, 1, 2, 1, 2, 3]` stacks base layers 0-2 then 1-3
(depth up-scaling as in SOLAR: overlap two copies of the stack); downscaling keeps a subset in order.
Each copied layer gets its new position as `layer_idx` (the KV cache is indexed by it) and the config's
`num_hidden_layers` (and per-layer `layer_types`, where the architecture has them) follow the new stack.

The result is a run dir of the shared contract: `model/` (a plain Hugging Face dir), `twin_model.json`
(kind "surgery", method "downscale" or "upscale") and an empty `metrics.jsonl`.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from llmtwin.errors import TwinError


@dataclass(frozen=True)
class SurgeryResult:
    run_dir: Path
    method: str
    base: str
    base_dir: str
    source_layers: int
    layers: list[int]
    params_before: int
    params_after: int

    def to_dict(self) -> dict:
        return {**asdict(self), "run_dir": str(self.run_dir)}


def parse_layers(text: str, option: str = "--layers") -> list[int]:
    """"0,1,2" or "0-2,1-3" (inclusive ranges) → [0, 1, 2, ...]; TwinError naming the bad item."""
    out: list[int] = []
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        try:
            if "-" in item[1:]:
                lo, hi = item.split("-", 1)
                lo_i, hi_i = int(lo), int(hi)
                if hi_i < lo_i:
                    raise ValueError
                out.extend(range(lo_i, hi_i + 1))
            else:
                out.append(int(item))
        except ValueError:
            raise TwinError(f"{option} {text!r}: {item!r} is not a layer index or a range like 2-5") from None
    if not out:
        raise TwinError(f"{option} {text!r}: no layer indices")
    return out


def middle_removed(num_layers: int, remove: int) -> list[int]:
    """The layers kept when `remove` layers are taken from the middle (first and last ones stay)."""
    if not 1 <= remove <= num_layers - 2:
        raise TwinError(f"--remove {remove}: the model has {num_layers} layers; remove between 1 and {num_layers - 2}")
    keep = num_layers - remove
    head = (keep + 1) // 2
    return list(range(head)) + list(range(num_layers - (keep - head), num_layers))


def _check_indices(layers: list[int], num_layers: int, option: str) -> None:
    bad = [i for i in layers if not 0 <= i < num_layers]
    if bad:
        raise TwinError(f"{option}: layer(s) {', '.join(map(str, bad))} out of range; the base has layers 0-{num_layers - 1} (0-based)")


def decoder_layers(model):
    """(parent module, attribute name) of the decoder layer list: model.model.layers (Llama, Qwen, Mistral…)
    or model.transformer.h (GPT-2 style)."""
    import torch

    for path in ("model.layers", "transformer.h", "model.decoder.layers", "gpt_neox.layers"):
        parent = model
        *parents, name = path.split(".")
        try:
            for p in parents:
                parent = getattr(parent, p)
            if isinstance(getattr(parent, name), torch.nn.ModuleList):
                return parent, name
        except AttributeError:
            continue
    raise TwinError(f"{type(model).__name__}: cannot find the decoder layer list (model.layers / transformer.h)")


def restack(model, layers: list[int]):
    """Replace the decoder stack of `model` (in place) by copies of its layers `layers`; returns the model."""
    import torch

    parent, name = decoder_layers(model)
    old = getattr(parent, name)
    used: set[int] = set()
    new = []
    for position, source in enumerate(layers):
        layer = old[source] if source not in used else copy.deepcopy(old[source])
        used.add(source)
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = position
        new.append(layer)
    setattr(parent, name, torch.nn.ModuleList(new))
    config = model.config
    for attr in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(getattr(config, attr, None), int):
            setattr(config, attr, len(layers))
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == len(old):
        config.layer_types = [layer_types[i] for i in layers]
    return model


def _num_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def run_surgery(base: str, method: str, layers: list[int] | None = None, remove: int | None = None,
                out_dir: Path | None = None, runs_dir: Path | None = None,
                base_dir: Path | None = None) -> SurgeryResult:
    """Build the new model from `base` and save it as a run dir (`out_dir`, else a new one under `runs_dir`).

    `base` is 'packaged' or a HF dir; a registry ref (NAME@ALIAS) comes with `base_dir`, its resolved HF dir.
    """
    from llmtwin.training.base_model import base_model_dir, load_causal_lm

    if method not in ("downscale", "upscale"):
        raise TwinError(f"unknown surgery {method!r}: expected downscale or upscale")
    base_dir = base_model_dir(base_dir if base_dir is not None else base)
    model, tokenizer = load_causal_lm(base_dir)
    parent, name = decoder_layers(model)
    num_layers = len(getattr(parent, name))
    option = "--layers" if method == "upscale" else "--keep-layers"
    if method == "downscale":
        if (layers is None) == (remove is None):
            raise TwinError("downscale: give either --remove N (layers taken from the middle) or --keep-layers 0,1,...")
        if layers is None:
            layers = middle_removed(num_layers, remove)
        _check_indices(layers, num_layers, option)
        if layers != sorted(set(layers)):
            raise TwinError(f"--keep-layers: expected increasing indices without repeats (use upscale to repeat layers); got {layers}")
        if len(layers) >= num_layers:
            raise TwinError(f"--keep-layers keeps all {num_layers} layers: nothing to remove")
    else:
        if not layers:
            raise TwinError("upscale: give --layers, e.g. --layers 0-19,10-29")
        _check_indices(layers, num_layers, option)
    params_before = _num_params(model)
    restack(model, layers)
    params_after = _num_params(model)

    stamp = time.strftime("%Y%m%d-%H%M%S")
    if out_dir is None:
        if runs_dir is None:
            raise TwinError("no output: give --out DIR or run inside a project")
        out_dir = runs_dir / f"{method}-{stamp}"
    out_dir = Path(out_dir)
    if (out_dir / "model").exists() and any((out_dir / "model").iterdir()):
        raise TwinError(f"{out_dir / 'model'} already exists and is not empty: choose another --out")
    (out_dir / "model").mkdir(parents=True, exist_ok=True)
    model.config.use_cache = True
    model.save_pretrained(out_dir / "model")
    tokenizer.save_pretrained(out_dir / "model")
    recipe = {"method": method, "source_layers": num_layers, "layers": layers, "layer_indexing": "0-based"}
    if remove is not None:
        recipe["remove"] = remove
    card = {
        "kind": "surgery", "method": method, "base": str(base), "base_dir": str(Path(base_dir).resolve()),
        "adapter": False, "recipe": recipe, "datasets": {"train": None, "validation": None},
        "metrics": {"params_before": params_before, "params_after": params_after, "layers": len(layers)},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "run_name": out_dir.name,
    }
    (out_dir / "twin_model.json").write_text(json.dumps(card, indent=2) + "\n")
    (out_dir / "metrics.jsonl").touch()
    return SurgeryResult(out_dir, method, str(base), card["base_dir"], num_layers, layers, params_before, params_after)
