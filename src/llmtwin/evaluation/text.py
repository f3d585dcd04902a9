"""Text-overlap metrics through the field's own packages: ROUGE (rouge-score), BLEU and chrF (sacrebleu),
plus exact match and token F1 with SQuAD normalisation (qa.py). Aggregates carry bootstrap CIs.

ROUGE-Lsum needs one sentence per line. rouge-score would split with nltk's punkt, which needs a data
download (not available offline), so `split_sentences` splits with a regex instead: at newlines, and
after ., ! or ? followed by whitespace. Text already split one sentence per line is kept as it is.

Conventions where the tools disagree (docs/evaluation.md): ROUGE, BLEU and chrF of an empty
prediction or an empty reference are 0 (as rouge-score and sacrebleu), even when both are empty;
EM and F1 of two empty strings are 1 (SQuAD 2.0: a correct abstention on an unanswerable question).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from llmtwin.evaluation.qa import exact_match, normalize_answer, token_f1
from llmtwin.evaluation.stats import Interval, bootstrap_ci, bootstrap_means

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")

__all__ = [
    "ROUGE_TYPES",
    "bleu",
    "chrf",
    "exact_match",
    "normalize_answer",
    "qa_scores",
    "rouge",
    "split_sentences",
    "token_f1",
]


def split_sentences(text: str) -> list[str]:
    """Sentences of `text`: split at newlines, then after ., ! or ? followed by whitespace."""
    out = []
    for line in text.splitlines():
        out.extend(s.strip() for s in _SENTENCE_END.split(line) if s.strip())
    return out


def rouge(
    predictions: Sequence[str],
    references: Sequence[str],
    *,
    types: Sequence[str] = ROUGE_TYPES,
    use_stemmer: bool = False,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """ROUGE per example (precision, recall, F) and the mean F of each type with a bootstrap CI.

    rouge-score's own tokenizer: lower case, every character outside a-z0-9 dropped (non-Latin text
    scores 0), Porter stemming (`use_stemmer`) only for tokens longer than 3 characters.
    Returns {"per_example": [{type: {"precision", "recall", "fmeasure"}}], "fmeasure": {type: Interval}}.
    """
    from rouge_score import rouge_scorer

    _check_pairs(predictions, references)
    types = list(types)
    plain = [t for t in types if t != "rougeLsum"]
    scorer = rouge_scorer.RougeScorer(plain, use_stemmer=use_stemmer) if plain else None
    lsum = rouge_scorer.RougeScorer(["rougeLsum"], use_stemmer=use_stemmer) if "rougeLsum" in types else None
    rows = []
    for pred, ref in zip(predictions, references):
        scores = dict(scorer.score(ref, pred)) if scorer else {}
        if lsum:
            split = lambda text: "\n".join(split_sentences(text))
            scores.update(lsum.score(split(ref), split(pred)))
        rows.append(
            {t: {"precision": float(s.precision), "recall": float(s.recall), "fmeasure": float(s.fmeasure)}
             for t, s in ((t, scores[t]) for t in types)}
        )
    columns = {t: [row[t]["fmeasure"] for row in rows] for t in types}
    return {
        "per_example": rows,
        "fmeasure": bootstrap_means(columns, resamples=resamples, confidence=confidence, seed=seed),
    }


def _references(references: Sequence[str] | Sequence[Sequence[str]], n: int) -> list[list[str]]:
    """sacrebleu's shape: a list of reference streams, each with one reference per prediction.
    Accepts one reference per prediction (strings) or several (a list of strings per prediction)."""
    if len(references) != n:
        raise ValueError(f"{n} predictions but {len(references)} references")
    if all(isinstance(r, str) for r in references):
        return [list(references)]  # type: ignore[arg-type]
    width = max(len(r) for r in references)
    # sacrebleu takes None for a missing reference in a stream
    return [[r[i] if i < len(r) else None for r in references] for i in range(width)]  # type: ignore[misc]


def _corpus_metric(metric, predictions, references, resamples, confidence, seed) -> dict[str, Any]:
    """Corpus score from summed sufficient statistics, so that the bootstrap resamples sentences
    (sacrebleu's own paired-bootstrap code does the same with these two methods)."""
    import numpy as np

    predictions = list(predictions)
    refs = _references(references, len(predictions))
    corpus = metric.corpus_score(predictions, refs)
    stats = np.asarray(metric._extract_corpus_statistics(predictions, refs), dtype=np.float64)
    ci = bootstrap_ci(
        stats,
        lambda rows: metric._compute_score_from_stats(list(rows.sum(axis=0))).score,
        resamples=resamples,
        confidence=confidence,
        seed=seed,
    )
    ci.value = float(corpus.score)
    return {"score": ci, "signature": str(metric.get_signature()), "text": str(corpus)}


def bleu(
    predictions: Sequence[str],
    references: Sequence[str] | Sequence[Sequence[str]],
    *,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    **options: Any,
) -> dict[str, Any]:
    """Corpus BLEU (sacrebleu defaults: tok 13a, mixed case, exp smoothing) with a bootstrap CI over
    sentences, and sentence BLEU per example (effective order, as sacrebleu.sentence_bleu)."""
    from sacrebleu.metrics import BLEU

    out = _corpus_metric(BLEU(**options), predictions, references, resamples, confidence, seed)
    sentence = BLEU(**{**options, "effective_order": True})
    refs = _references(references, len(predictions))
    out["per_example"] = [
        float(sentence.sentence_score(p, [stream[i] for stream in refs if stream[i] is not None]).score)
        for i, p in enumerate(predictions)
    ]
    return out


def chrf(
    predictions: Sequence[str],
    references: Sequence[str] | Sequence[Sequence[str]],
    *,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    **options: Any,
) -> dict[str, Any]:
    """Corpus chrF (sacrebleu defaults: character 6-grams, β = 2; `word_order=2` gives chrF++) with a
    bootstrap CI, and sentence chrF per example."""
    from sacrebleu.metrics import CHRF

    metric = CHRF(**options)
    out = _corpus_metric(metric, predictions, references, resamples, confidence, seed)
    refs = _references(references, len(predictions))
    out["per_example"] = [
        float(metric.sentence_score(p, [stream[i] for stream in refs if stream[i] is not None]).score)
        for i, p in enumerate(predictions)
    ]
    return out


def qa_scores(
    predictions: Sequence[str],
    references: Sequence[str | Sequence[str]],
    *,
    abstained: Sequence[bool] | None = None,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Exact match and token F1 (SQuAD normalisation), best over each example's references.

    An unanswerable question has the reference "" (or no references). A prediction marked in
    `abstained` counts as the empty answer, so an abstention scores 1 on an unanswerable question
    and 0 on an answerable one.
    """
    _check_pairs(predictions, references)
    rows = []
    for i, (pred, refs) in enumerate(zip(predictions, references)):
        if abstained is not None and abstained[i]:
            pred = ""
        golds = [refs] if isinstance(refs, str) else (list(refs) or [""])
        rows.append(
            {
                "exact_match": max(exact_match(pred, g) for g in golds),
                "token_f1": max(token_f1(pred, g) for g in golds),
                "unanswerable": all(not normalize_answer(g) for g in golds),
            }
        )
    columns = {m: [r[m] for r in rows] for m in ("exact_match", "token_f1")}
    means: dict[str, Interval] = bootstrap_means(columns, resamples=resamples, confidence=confidence, seed=seed)
    return {"per_example": rows, **means}


def _check_pairs(predictions: Sequence, references: Sequence) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
