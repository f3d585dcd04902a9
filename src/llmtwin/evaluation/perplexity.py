"""Perplexity of a causal LM on texts, per token and per byte, with a sliding window for long texts.

Per token: exp(Σ NLL / number of predicted tokens). Per byte: exp(Σ NLL / number of UTF-8 bytes)
(bits per byte = Σ NLL / (bytes · ln 2)); per byte compares models with different tokenizers.

Every token of the text is predicted: the text is prefixed with the tokenizer's BOS token (or EOS
where there is no BOS, the GPT-2 convention of a document separator); with neither, the first
token has no context and is not scored (its bytes still count). A text longer than the window is
scored in windows of `window` tokens that advance by `stride`: each window predicts only the
tokens that no earlier window predicted, using the preceding tokens as context (at least
window - stride of them), the method of the Hugging Face perplexity guide.

`model` is a `models.llm.TransformersLLM` (its `model` and `tokenizer`), or a (model, tokenizer) pair.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from llmtwin.evaluation.stats import bootstrap_ci


def _model_and_tokenizer(llm: Any):
    if isinstance(llm, tuple):
        return llm
    if hasattr(llm, "model") and hasattr(llm, "tokenizer"):
        return llm.model, llm.tokenizer
    from llmtwin.errors import TwinError

    raise TwinError(
        f"perplexity needs a transformers model (llm.backend: transformers or provider: hf), not {type(llm).__name__}"
    )


def token_nlls(llm: Any, text: str, *, window: int | None = None, stride: int | None = None) -> tuple[list[float], int]:
    """Negative log-likelihood (nats) of each predicted token of `text`, and the text's byte count."""
    import torch

    model, tokenizer = _model_and_tokenizer(llm)
    ids = tokenizer.encode(text, add_special_tokens=False)
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if prefix is not None:
        ids = [prefix] + ids
    n_bytes = len(text.encode("utf-8"))
    if len(ids) < 2:
        return [], n_bytes
    limit = getattr(model.config, "max_position_embeddings", None) or 2048
    window = min(window or limit, limit)
    stride = stride or max(1, window // 2)
    if not 1 <= stride <= window or window < 2:
        raise ValueError(f"window {window}, stride {stride}: expected window ≥ 2 and 1 ≤ stride ≤ window")
    nlls: list[float] = []
    scored = 1  # ids[0] is never predicted
    with torch.inference_mode():
        while scored < len(ids):
            end = min(len(ids), window if scored == 1 else scored + stride)
            begin = max(0, end - window)
            chunk = torch.tensor([ids[begin:end]], dtype=torch.long)
            logits = model(chunk).logits[0].float()  # (len, vocab)
            logprobs = torch.log_softmax(logits[:-1], dim=-1)
            targets = chunk[0, 1:]
            token_lp = logprobs.gather(1, targets[:, None])[:, 0]
            first = scored - begin - 1  # position in token_lp of the first not-yet-scored token
            nlls.extend((-token_lp[first:]).tolist())
            scored = end
    return nlls, n_bytes


def perplexity(
    llm: Any,
    texts: Sequence[str],
    *,
    window: int | None = None,
    stride: int | None = None,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Corpus perplexity per token and per byte (Σ NLL over all texts / Σ tokens or bytes), bits per
    byte, and each text's own values; CIs resample texts. An empty text predicts nothing and is
    left out (its row says so)."""
    import numpy as np

    rows = []
    for text in texts:
        nlls, n_bytes = token_nlls(llm, text, window=window, stride=stride)
        total = float(sum(nlls))
        rows.append(
            {
                "tokens": len(nlls),
                "bytes": n_bytes,
                "nll": total,
                "ppl_token": math.exp(total / len(nlls)) if nlls else None,
                "ppl_byte": math.exp(total / n_bytes) if n_bytes else None,
            }
        )
    used = np.array([[r["nll"], r["tokens"], r["bytes"]] for r in rows if r["tokens"]], dtype=np.float64)
    if not len(used):
        return {"per_text": rows, "ppl_token": None, "ppl_byte": None, "bits_per_byte": None, "tokens": 0, "bytes": 0}
    opts = dict(resamples=resamples, confidence=confidence, seed=seed)
    return {
        "per_text": rows,
        "ppl_token": bootstrap_ci(used, lambda a: math.exp(a[:, 0].sum() / a[:, 1].sum()), **opts),
        "ppl_byte": bootstrap_ci(used, lambda a: math.exp(a[:, 0].sum() / a[:, 2].sum()), **opts),
        "bits_per_byte": bootstrap_ci(used, lambda a: a[:, 0].sum() / a[:, 2].sum() / math.log(2), **opts),
        "tokens": int(used[:, 1].sum()),
        "bytes": int(used[:, 2].sum()),
    }
