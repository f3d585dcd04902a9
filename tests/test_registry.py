"""The model registry end to end on real MLflow (SQLite in a tmp project): record a trained run dir,
list/show/resolve it, answer with it through the real `twin` CLI, promote (refusing a worse
candidate unless forced), export a merged LoRA whose logits equal the PEFT model's, and serve it.

The "trained" models are real PEFT adapters on the packaged SmolLM2 with random LoRA B matrices
(no optimizer steps: training is the trainers' tests' job): a small one (std 0.02, close to the
base) and a large one (std 0.5, clearly worse on held-out text).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmtwin.errors import TwinError

# Idle OpenMP threads must not spin while other processes share the 2 cores (as cli.main sets it):
# measured here under load 20+, this cut the promotion test from 198 s to 27 s. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

TWIN = [str(Path(sys.executable).parent / "twin")]
QUESTION = "What do sea otters use as tools?"
SFT_ROWS = [
    ("What do sea otters use as tools?", "Sea otters use rocks as tools to open shellfish."),
    ("Where do sea otters live?", "Sea otters live in the North Pacific Ocean."),
    ("What do sea otters eat?", "They eat shellfish such as clams, mussels and sea urchins."),
]


def _rows(rows) -> str:
    return "".join(
        json.dumps({"prompt": [{"role": "user", "content": q}], "completion": [{"role": "assistant", "content": a}],
                    "id": f"r{i}", "chunk_id": "c0", "kind": "qa"}) + "\n"
        for i, (q, a) in enumerate(rows)
    )


def make_run(root: Path, run_name: str, *, std: float, kind: str = "lora", dataset_hash: str = "") -> Path:
    """A run dir per the shared contract: model/ (PEFT adapter + tokenizer), twin_model.json, metrics.jsonl."""
    import torch
    from peft import LoraConfig, PromptTuningConfig, get_peft_model

    from llmtwin.training.base_model import base_model_dir, load_causal_lm

    run = root / ".twin" / "runs" / run_name
    (run / "model").mkdir(parents=True)
    model, tokenizer = load_causal_lm("packaged")
    if kind == "prompt":
        peft_cfg = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    else:
        peft_cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, peft_cfg)
    torch.manual_seed(0)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=std)
    peft_model.save_pretrained(run / "model")
    tokenizer.save_pretrained(run / "model")
    card = {
        "kind": kind, "method": "sft", "base": "packaged", "base_dir": str(base_model_dir("packaged")),
        "adapter": True, "recipe": {"learning_rate": 1e-4, "lora": {"r": 4, "targets": ["q_proj", "v_proj"]}},
        "datasets": {"train": dataset_hash, "validation": dataset_hash},
        "metrics": {"final_train_loss": 1.23}, "created": "2026-11-21T12:00:00", "run_name": run_name,
    }
    (run / "twin_model.json").write_text(json.dumps(card), encoding="utf-8")
    (run / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 2.0 - 0.25 * s, "learning_rate": 1e-4}) + "\n" for s in range(1, 5))
        + "not json\n",
        encoding="utf-8",
    )
    return run


@pytest.fixture(scope="module")
def project(tmp_path_factory, embedder):  # embedder: Twin(root).ingest below loads it (marks the tests `model`)
    """A tiny ingested project with a held-out SFT dataset under .twin/datasets/tiny/."""
    from llmtwin import Twin
    from llmtwin.project import init_project

    root = tmp_path_factory.mktemp("registry")
    init_project(root)
    docs = root / "docs"
    docs.mkdir()
    (docs / "otters.md").write_text(
        "# Sea otters\n\nSea otters use rocks as tools to open shellfish. They live in the North Pacific.\n",
        encoding="utf-8",
    )
    Twin(root).ingest([docs])
    data = root / ".twin" / "datasets" / "tiny"
    data.mkdir(parents=True)
    (data / "train.jsonl").write_text(_rows(SFT_ROWS[:1]), encoding="utf-8")
    (data / "validation.jsonl").write_text(_rows(SFT_ROWS), encoding="utf-8")
    digest = "sha256:" + hashlib.sha256((data / "train.jsonl").read_bytes() + (data / "validation.jsonl").read_bytes()).hexdigest()
    (data / "card.json").write_text(json.dumps({"name": "tiny", "kind": "sft", "content_hash": digest}), encoding="utf-8")
    return root, digest


def _cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([*TWIN, "--project", str(root), *args], check=False, capture_output=True, text=True, env=env, timeout=600)


def test_refs_and_bad_input(tmp_path):
    from llmtwin.registry.record import is_registry_ref, parse_ref, record_run

    assert parse_ref("twin-sft@champion") == ("twin-sft", "champion", None)
    assert parse_ref("twin-sft/3") == ("twin-sft", None, 3)
    assert parse_ref("twin-sft") == ("twin-sft", None, None)
    with pytest.raises(TwinError, match="NAME@ALIAS"):
        parse_ref("twin sft@@x")
    assert is_registry_ref("twin-sft@champion") and not is_registry_ref("packaged")
    assert not is_registry_ref(str(tmp_path))
    (tmp_path / "run" / "model").mkdir(parents=True)
    with pytest.raises(TwinError, match="twin_model.json: missing"):
        record_run(tmp_path, tmp_path / "run")
    (tmp_path / "run" / "twin_model.json").write_text('{"kind": "lora"}')
    with pytest.raises(TwinError, match="missing field.*method"):
        record_run(tmp_path, tmp_path / "run")


def test_record_list_show_resolve(project):
    from llmtwin.config import TwinConfig
    from llmtwin.registry.models import list_models, resolve, show_model
    from llmtwin.registry.record import record_run
    from llmtwin.registry.tracking import open_tracking

    root, digest = project
    run = make_run(root, "sft-lora-small", std=0.02, dataset_hash=digest)
    out = record_run(root, run)
    assert out["name"] == "twin-sft" and out["version"] == 1 and out["ref"] == "twin-sft@candidate"

    # what MLflow holds: params (flattened recipe), tags (lineage), the loss curve with its steps
    client = open_tracking(root, TwinConfig()).client
    logged = client.get_run(out["run_id"])
    assert logged.data.params["recipe.lora.r"] == "4"
    assert logged.data.tags["twin.dataset.train"] == digest and logged.data.tags["twin.base"] == "packaged"
    curve = sorted((m.step, m.value) for m in client.get_metric_history(out["run_id"], "loss"))
    assert curve == [(1, 1.75), (2, 1.5), (3, 1.25), (4, 1.0)]
    assert logged.data.metrics["final_train_loss"] == pytest.approx(1.23)

    assert list_models(root) == [{"name": "twin-sft", "versions": 1, "latest": 1, "aliases": {"candidate": 1}, "kinds": ["lora"]}]
    shown = show_model(root, "twin-sft")
    v1 = shown["versions"][0]
    assert v1["aliases"] == ["candidate"] and v1["lineage"]["datasets"] == {"train": digest, "validation": digest}
    assert v1["lineage"]["run_name"] == "sft-lora-small"

    # the model was copied into the registry: it resolves after the run dir is deleted
    import shutil

    shutil.rmtree(run)
    for ref in ("twin-sft@candidate", "twin-sft/1", "twin-sft"):
        resolved = resolve(root, ref)
        assert resolved.version == 1 and resolved.adapter
        assert (resolved.model_dir / "adapter_model.safetensors").is_file()
        assert resolved.card["kind"] == "lora" and resolved.card["run_name"] == "sft-lora-small"
    with pytest.raises(TwinError, match="no alias 'champion'.*candidate→1"):
        resolve(root, "twin-sft@champion")
    with pytest.raises(TwinError, match="no registered model 'nope'"):
        resolve(root, "nope@champion")


def test_ask_with_registered_model_through_the_cli(project):
    root, _ = project
    done = _cli(root, "ask", "--model", "twin-sft@candidate", "--max-new-tokens", "24", "--json", QUESTION)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["answer"].strip()
    trace = next(
        json.loads(line) for f in (root / ".twin" / "traces").glob("*.jsonl")
        for line in f.read_text().splitlines() if answer["trace_id"] in line
    )
    assert json.dumps(trace).count("twin-sft@candidate") >= 1  # the trace names the registered model
    assert (root / ".twin" / "cache" / "registry" / "twin-sft" / "v1-merged" / "config.json").is_file()


def test_promote_refuses_a_worse_candidate_unless_forced(project):
    from llmtwin.config import TwinConfig
    from llmtwin.registry.models import list_models
    from llmtwin.registry.promote import promote
    from llmtwin.registry.record import record_run
    from llmtwin.registry.tracking import open_tracking

    root, digest = project
    first = promote(root, "twin-sft")  # no champion yet: evaluated, then promoted
    assert first.promoted and first.champion is None and first.reason == "no champion yet"
    assert first.dataset.endswith("tiny/validation.jsonl") and first.candidate.examples == 3
    assert list_models(root)[0]["aliases"] == {"candidate": 1, "champion": 1}

    record_run(root, make_run(root, "sft-lora-noisy", std=0.5, dataset_hash=digest))
    from typer.testing import CliRunner

    from llmtwin.cli import app

    # the real CLI, in-process; scoring 1 example per model keeps this test short on 2 cores
    done = CliRunner().invoke(app, ["--project", str(root), "models", "promote", "twin-sft", "--limit", "1"])
    assert done.exit_code == 1, done.output
    assert "NOT promoted" in done.output and "candidate v2" in done.output and "champion  v1" in done.output
    assert list_models(root)[0]["aliases"] == {"candidate": 2, "champion": 1}

    one = TwinConfig().model_copy(update={"registry": TwinConfig().registry.model_copy(update={"promote_limit": 1})})
    forced = promote(root, "twin-sft@candidate", force=True, dataset="tiny", config=one)
    assert forced.candidate.examples == 1
    assert forced.promoted and forced.forced and forced.candidate.loss > forced.champion.loss
    assert list_models(root)[0]["aliases"] == {"candidate": 2, "champion": 2}
    client = open_tracking(root, TwinConfig()).client
    runs = client.search_runs([client.get_experiment_by_name("llmtwin").experiment_id],
                              "tags.`twin.promotion` = 'twin-sft'")
    assert len(runs) == 3 and {r.data.tags["twin.promoted"] for r in runs} == {"true", "false"}
    assert client.get_model_version("twin-sft", "2").tags["twin.eval.loss"] == f"{forced.candidate.loss:.6f}"


def test_lineage_of_a_model_trained_on_a_registered_base(project):
    import shutil

    from llmtwin.registry.models import show_model
    from llmtwin.registry.record import record_run

    root, _ = project
    child = root / ".twin" / "runs" / "sft-lora-child"
    shutil.copytree(root / ".twin" / "runs" / "sft-lora-noisy", child)
    card = json.loads((child / "twin_model.json").read_text())
    (child / "twin_model.json").write_text(json.dumps({**card, "base": "twin-sft@champion", "run_name": child.name}))
    out = record_run(root, child, name="twin-child")
    version = show_model(root, out["ref"])["versions"][0]
    assert version["lineage"]["parent"] == "twin-sft/2" and version["lineage"]["base"] == "twin-sft@champion"


def test_export_merge_equals_peft_logits(project, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from llmtwin.registry.merge import export
    from llmtwin.registry.models import resolve
    from llmtwin.training.base_model import base_model_dir

    root, _ = project
    result = export(root, "twin-sft/1", tmp_path / "merged", merge=True)
    merged_dir = Path(result["out"])
    assert result["what"] == "merged" and (merged_dir / "model.safetensors").is_file()
    assert not (merged_dir / "adapter_config.json").exists() and (merged_dir / "tokenizer.json").is_file()

    ids = torch.tensor([[1, 504, 3459, 10095, 2533, 4104, 347]])
    with torch.inference_mode():
        base = AutoModelForCausalLM.from_pretrained(base_model_dir("packaged"), dtype=torch.float32)
        base_logits = base(ids).logits
        peft_logits = PeftModel.from_pretrained(base, resolve(root, "twin-sft/1").model_dir).eval()(ids).logits
        merged_logits = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)(ids).logits
    assert not torch.allclose(peft_logits, base_logits, atol=1e-3)  # the adapter changes the model
    torch.testing.assert_close(merged_logits, peft_logits, atol=1e-4, rtol=1e-4)

    plain = export(root, "twin-sft@champion", tmp_path / "adapter")
    assert plain["what"] == "adapter" and (Path(plain["out"]) / "adapter_config.json").is_file()
    with pytest.raises(TwinError, match="not empty"):
        export(root, "twin-sft/1", tmp_path / "adapter")


def test_prompt_tuning_runs_but_cannot_merge(project, tmp_path):
    from llmtwin.config import TwinConfig
    from llmtwin.registry.load import load_registered
    from llmtwin.registry.merge import export
    from llmtwin.registry.record import record_run

    root, _ = project
    out = record_run(root, make_run(root, "prompt-tuning", std=0.0, kind="prompt"), name="twin-prompt")
    with pytest.raises(TwinError, match="prompt tuning adapter cannot be merged"):
        export(root, out["ref"], tmp_path / "x", merge=True)
    llm = load_registered(root, out["ref"], TwinConfig())
    text = llm.complete([{"role": "user", "content": "Say hello."}], max_new_tokens=6)
    assert isinstance(text, str) and text.strip()


def test_server_lists_and_answers_with_registered_models(project):
    from fastapi.testclient import TestClient

    from llmtwin import Twin
    from llmtwin.serve.app import create_app

    root, _ = project
    # a server without keys answers loopback Host names only (TestClient's default is "testserver")
    with TestClient(create_app(Twin(root), keys=None, warm=False), base_url="http://127.0.0.1:8000") as client:
        ids = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
        assert {"twin-rag", "twin-sft@champion", "twin-sft@candidate", "twin-sft", "twin-prompt@candidate"} <= set(ids)
        assert ids["twin-sft@champion"]["version"] == 2 and ids["twin-sft@champion"]["kind"] == "registered"
        r = client.post("/v1/chat/completions", json={
            "model": "twin-sft@champion", "max_tokens": 8, "messages": [{"role": "user", "content": QUESTION}]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "twin-sft@champion" and "citations" not in body
        assert body["choices"][0]["message"]["content"].strip()
        r = client.post("/v1/chat/completions", json={"model": "twin-sft@nope", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 404
