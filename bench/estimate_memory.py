"""`twin estimate` against the measured peak memory of real short training runs on this machine.

    .venv/bin/python bench/estimate_memory.py            # measure every setting, then compare
    .venv/bin/python bench/estimate_memory.py --compare  # compare the saved measurements only
    .venv/bin/python bench/estimate_memory.py --only "full b2 s128" --steps 8 --save extra.json

Each setting runs in a fresh subprocess (so peaks do not mix): import torch/transformers/peft, load the
packaged SmolLM2-135M (float32), optionally wrap it with LoRA, then run a few AdamW steps on random tokens
(batch × seq, labels = inputs). The peak is the process's peak resident set size (`ru_maxrss`), which
includes the Python interpreter and the framework libraries: that is what `twin estimate` calls overhead.
Phase peaks come from /proc/self/status VmHWM, reset between phases with /proc/self/clear_refs.

Raw measurements: bench/results/estimate_memory.json; the table: printed (and copied into
bench/results/estimate.md by hand, with the load average).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "estimate_memory.json"

SETTINGS = [
    {"name": "full b2 s128", "mode": "full", "batch": 2, "seq": 128, "ckpt": False},
    {"name": "full b4 s256", "mode": "full", "batch": 4, "seq": 256, "ckpt": False},
    {"name": "full b4 s256 ckpt", "mode": "full", "batch": 4, "seq": 256, "ckpt": True},
    {"name": "lora r8 b2 s128", "mode": "lora", "batch": 2, "seq": 128, "ckpt": False, "r": 8},
    {"name": "lora r8 b4 s256", "mode": "lora", "batch": 4, "seq": 256, "ckpt": False, "r": 8},
    {"name": "inference", "mode": "inference", "batch": 1, "seq": 128, "ckpt": False},
]
STEPS = 3  # --steps N changes it


def _arg(flag: str, default: str | None = None) -> str | None:
    return sys.argv[sys.argv.index(flag) + 1] if flag in sys.argv else default


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def measure_one(setting: dict) -> dict:
    """Run one setting in this process; return MiB numbers."""
    import resource

    import torch

    torch.set_num_threads(2)
    import transformers  # noqa: F401  (part of the framework baseline)

    if setting["mode"] == "lora":
        import peft  # noqa: F401
    from llmtwin.training.base_model import load_causal_lm

    out: dict = {"after_imports_mib": _status_kib("VmRSS") / 1024}
    _reset_peak()
    model, _ = load_causal_lm("packaged")
    out["after_load_mib"] = _status_kib("VmRSS") / 1024
    out["load_peak_mib"] = _status_kib("VmHWM") / 1024
    if setting["mode"] == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=setting["r"], lora_alpha=2 * setting["r"],
                                                 target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    out["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    out["params"] = sum(p.numel() for p in model.parameters())
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 49152, (setting["batch"], setting["seq"]), generator=g)
    _reset_peak()
    t0 = time.perf_counter()
    if setting["mode"] == "inference":
        model.eval()
        with torch.no_grad():
            model(input_ids=ids)
        out["step_peaks_mib"] = [_status_kib("VmHWM") / 1024]
    else:
        if setting["ckpt"]:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if setting["mode"] == "lora":
                model.enable_input_require_grads()
        model.config.use_cache = False
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        losses, peaks = [], []
        for _ in range(setting.get("steps", STEPS)):
            _reset_peak()
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss))
            peaks.append(_status_kib("VmHWM") / 1024)
        out["losses"] = losses
        out["step_peaks_mib"] = peaks
    out["seconds"] = time.perf_counter() - t0
    out["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def measure_all(only: str | None = None, steps: int = STEPS) -> list[dict]:
    rows = []
    for setting in SETTINGS:
        if only is not None and setting["name"] != only:
            continue
        setting = {**setting, "steps": steps}
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(setting)],
                              capture_output=True, text=True, cwd=ROOT, check=False)
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            raise SystemExit(f"{setting['name']}: failed")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append({**setting, **result, "wall_s": time.perf_counter() - t0})
        print(f"{setting['name']}: peak {result['peak_mib']:.0f} MiB ({time.perf_counter() - t0:.0f} s)", flush=True)
    return rows


def compare(rows: list[dict]) -> list[dict]:
    from llmtwin.training.estimate import estimate_memory, model_shape

    shape = model_shape("packaged")
    table = []
    for row in rows:
        est = estimate_memory(
            shape, dtype="fp32", batch=row["batch"], seq=row["seq"], grad_checkpointing=row["ckpt"],
            lora_r=row.get("r"), inference=row["mode"] == "inference",
        )
        predicted = est.per_device_total / 2**20
        table.append({"name": row["name"], "measured_mib": row["peak_mib"], "estimate_mib": predicted,
                      "error": predicted / row["peak_mib"] - 1, "breakdown_mib": {k: v / 2**20 for k, v in est.breakdown().items()}})
    return table


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        print(json.dumps(measure_one(json.loads(sys.argv[2]))))
        return
    results = RESULTS.with_name(_arg("--save")) if "--save" in sys.argv else RESULTS
    if "--compare" in sys.argv:
        data = json.loads(results.read_text())
    else:
        load = os.getloadavg()
        steps = int(_arg("--steps", str(STEPS)))
        rows = measure_all(_arg("--only"), steps)
        data = {"date": time.strftime("%Y-%m-%d %H:%M"), "load_before": load, "load_after": os.getloadavg(),
                "steps": steps, "rows": rows}
        results.parent.mkdir(parents=True, exist_ok=True)
        results.write_text(json.dumps(data, indent=2))
    try:
        table = compare(data["rows"])
    except ImportError as e:
        print(f"(no comparison: {e})")
        return
    print(f"{'setting':<20} {'measured MiB':>12} {'estimate MiB':>12} {'error':>7}")
    for t in table:
        print(f"{t['name']:<20} {t['measured_mib']:12.0f} {t['estimate_mib']:12.0f} {t['error']:+7.1%}")
    data["comparison"] = table
    results.write_text(json.dumps(data, indent=2))


if __name__ == "__main__":
    main()
