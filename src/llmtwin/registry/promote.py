"""Promotion: score the candidate and the current champion on the same held-out set; move the
`champion` alias only when the candidate's loss is lower (or when forced).

The score is the mean negative log-likelihood per predicted token (and its perplexity, exp of
it) — of the assistant completion given the prompt for SFT rows (`prompt`/`completion`), of the
chosen answer for preference rows, of the whole text for `text` rows (CPT). The held-out set is
`--dataset` (a dataset name under .twin/datasets/, a dir, or a JSONL file), else the validation
split of the dataset the candidate was trained on (found by its content hash, or recipe.dataset).
Every evaluation is logged as an MLflow run (`promote-NAME-vN`) and as tags on the versions.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llmtwin.config import TwinConfig
from llmtwin.errors import TwinError
from llmtwin.registry.record import CANDIDATE, CHAMPION, parse_ref

MAX_TOKENS = 512  # per example: longer examples are cut (their start kept)


@dataclass
class Score:
    version: int
    loss: float  # mean NLL per predicted token (nats)
    ppl: float
    tokens: int
    examples: int
    seconds: float


@dataclass
class Promotion:
    name: str
    promoted: bool
    forced: bool
    reason: str
    dataset: str
    candidate: Score
    champion: Score | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------- the held-out set
def _dataset_file(root: Path, spec: str) -> Path:
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    for folder in (path, root / ".twin" / "datasets" / spec):
        if folder.is_dir():
            for fname in ("validation.jsonl", "test.jsonl"):
                if (folder / fname).is_file():
                    return folder / fname
            raise TwinError(f"dataset {spec!r}: {folder} has no validation.jsonl")
    raise TwinError(f"dataset {spec!r}: not a JSONL file, a dataset dir, or a name under {root / '.twin' / 'datasets'}")


def find_heldout(root: Path, card: dict[str, Any]) -> Path:
    """The validation split of the dataset the candidate was trained on."""
    recipe = card.get("recipe") or {}
    for key in ("dataset", "data", "train_dataset"):
        spec = recipe.get(key) if isinstance(recipe, dict) else None
        if isinstance(spec, str) and spec:
            try:
                return _dataset_file(root, spec)
            except TwinError:
                pass
    hashes = {v for v in (card.get("datasets") or {}).values() if v}
    for card_path in sorted((root / ".twin" / "datasets").glob("*/card.json")):
        try:
            content_hash = json.loads(card_path.read_text(encoding="utf-8")).get("content_hash")
        except (OSError, json.JSONDecodeError):
            continue
        if content_hash in hashes and (card_path.parent / "validation.jsonl").is_file():
            return card_path.parent / "validation.jsonl"
    raise TwinError(
        "promote: cannot find the candidate's held-out set (no dataset under .twin/datasets/ has its "
        f"content hash {sorted(hashes) or 'none recorded'}); pass --dataset NAME|PATH"
    )


def load_examples(path: Path, limit: int) -> tuple[list[tuple[list[dict] | None, str]], list[str]]:
    """(prompt messages or None, text to score) per usable row, and the problems of the others."""
    rows: list[tuple[list[dict] | None, str]] = []
    problems: list[str] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if len(rows) >= limit:
            break
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            if "completion" in obj or "chosen" in obj:
                answer = obj.get("completion", obj.get("chosen"))
                text = answer if isinstance(answer, str) else "".join(m["content"] for m in answer)
                prompt = obj["prompt"]
                prompt = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
                rows.append((prompt, text))
            elif isinstance(obj.get("text"), str):
                rows.append((None, obj["text"]))
            else:
                raise KeyError("expected prompt/completion, prompt/chosen or text")
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            problems.append(f"{path}:{n}: {e}")
    if not rows:
        raise TwinError(f"{path}: no usable examples ({'; '.join(problems[:3]) or 'empty'})")
    return rows, problems


# ---------------------------------------------------------------------------- scoring
def completion_nlls(model, tokenizer, prompt: list[dict], completion: str) -> list[float]:
    """NLL of each token of the assistant `completion` after the chat-templated `prompt`."""
    import torch

    head = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": completion}], tokenize=False)
    head_ids = tokenizer.encode(head, add_special_tokens=False)
    ids = tokenizer.encode(full, add_special_tokens=False)
    start = len(head_ids)  # chat templates render the prompt as a prefix of the whole conversation
    if len(ids) > MAX_TOKENS:
        cut = len(ids) - MAX_TOKENS
        ids, start = ids[cut:], max(1, start - cut)
    if start >= len(ids):
        return []
    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0, :-1].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    targets = torch.tensor(ids[1:])
    token_lp = logprobs.gather(1, targets[:, None])[:, 0]
    return (-token_lp[start - 1 :]).tolist()


def score(llm, version: int, examples: list[tuple[list[dict] | None, str]]) -> Score:
    from llmtwin.evaluation.perplexity import token_nlls

    t0 = time.perf_counter()
    total, tokens = 0.0, 0
    for prompt, text in examples:
        if prompt is None:
            nlls, _ = token_nlls(llm, text, window=MAX_TOKENS)
        else:
            nlls = completion_nlls(llm.model, llm.tokenizer, prompt, text)
        total += sum(nlls)
        tokens += len(nlls)
    if not tokens:
        raise TwinError("promote: the held-out examples have no tokens to score")
    loss = total / tokens
    return Score(version, loss, math.exp(loss), tokens, len(examples), time.perf_counter() - t0)


# ---------------------------------------------------------------------------- promote
def promote(
    root: Path,
    ref: str,
    *,
    force: bool = False,
    dataset: str | None = None,
    config: TwinConfig | None = None,
) -> Promotion:
    """Evaluate `ref` (default alias candidate) against the champion; move `champion` if it wins."""
    from mlflow.exceptions import MlflowException

    from llmtwin.models.get import clear_cache
    from llmtwin.registry.load import load_registered
    from llmtwin.registry.models import resolve, set_alias, tag_version
    from llmtwin.registry.tracking import open_tracking

    config = config or TwinConfig()
    name, alias, version = parse_ref(ref)
    if alias is None and version is None:
        ref = f"{name}@{CANDIDATE}"
    candidate = resolve(root, ref, config)
    tracking = open_tracking(root, config)
    try:
        champion_version: int | None = int(tracking.client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        champion_version = None
    heldout = _dataset_file(root, dataset) if dataset else find_heldout(root, candidate.card)
    examples, problems = load_examples(heldout, config.registry.promote_limit)

    def evaluate(v: int) -> Score:
        llm = load_registered(root, f"{name}/{v}", config, seed=config.seed)
        try:
            return score(llm, v, examples)
        finally:
            del llm
            clear_cache()

    cand_score = evaluate(candidate.version)
    champ_score = None
    if champion_version is not None and champion_version != candidate.version:
        champ_score = evaluate(champion_version)

    if champion_version == candidate.version:
        promoted, reason = False, f"version {candidate.version} is already the champion"
    elif champ_score is None:
        promoted, reason = True, "no champion yet"
    elif cand_score.loss < champ_score.loss:
        promoted, reason = True, f"held-out loss {cand_score.loss:.4f} < champion's {champ_score.loss:.4f}"
    elif force:
        promoted, reason = True, f"forced: held-out loss {cand_score.loss:.4f} ≥ champion's {champ_score.loss:.4f}"
    else:
        promoted, reason = False, f"held-out loss {cand_score.loss:.4f} is not below the champion's {champ_score.loss:.4f}"
    if promoted:
        set_alias(root, name, CHAMPION, candidate.version, config)
    result = Promotion(name, promoted, force and promoted and champ_score is not None and cand_score.loss >= champ_score.loss,
                       reason, str(heldout), cand_score, champ_score)
    _record(tracking, result, problems)
    for s in (cand_score, champ_score):
        if s is not None:
            tag_version(root, name, s.version, {"twin.eval.loss": f"{s.loss:.6f}", "twin.eval.ppl": f"{s.ppl:.4f}",
                                                "twin.eval.dataset": str(heldout), "twin.eval.examples": str(s.examples)}, config)
    return result


def _record(tracking, result: Promotion, problems: list[str]) -> None:
    from mlflow.entities import Metric, Param

    client = tracking.client
    run = client.create_run(
        tracking.experiment_id(), run_name=f"promote-{result.name}-v{result.candidate.version}",
        tags={"twin.promotion": result.name, "twin.promoted": str(result.promoted).lower(),
              "twin.forced": str(result.forced).lower(), "twin.reason": result.reason[:5000]},
    )
    now = int(time.time() * 1000)
    metrics = [Metric("candidate.loss", result.candidate.loss, now, 0), Metric("candidate.ppl", result.candidate.ppl, now, 0)]
    if result.champion is not None:
        metrics += [Metric("champion.loss", result.champion.loss, now, 0), Metric("champion.ppl", result.champion.ppl, now, 0)]
    params = [Param("dataset", result.dataset[:6000]), Param("candidate_version", str(result.candidate.version)),
              Param("champion_version", str(result.champion.version) if result.champion else "none"),
              Param("examples", str(result.candidate.examples)), Param("bad_rows", str(len(problems)))]
    client.log_batch(run.info.run_id, metrics=metrics, params=params, synchronous=True)
    client.set_terminated(run.info.run_id, "FINISHED")
