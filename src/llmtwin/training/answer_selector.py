"""`twin tune answers`: train the extractive answer selector on the project's own chunks, no labels.

Pseudo-questions are made from the chunks' own sentences, as unsupervised extractive QA does with
cloze questions: a sentence's answer-like span (a number, a year or date, a name, else a content
word) is taken out and replaced by a question word ("how many", "when", "who", "what"), and a
third of the remaining content words are dropped, so the question shares words with its sentence
the way a real question does: partly. Each pseudo-question is searched like a real one; where its
sentence's chunk comes back among the top `answer_chunks`, every candidate sentence becomes a
training row, labelled 1 for the sentence the question came from. The same search with that chunk
left out (and any chunk holding the sentence) gives unanswerable rows, all labelled 0: they teach
the selector's probability to stay low where the evidence does not hold the answer.

A logistic regression (Newton steps in numpy, its weights pulled towards the defaults) is fitted on 80 % of the chunks' questions; the
other 20 % check it against the default weights: top-1 accuracy on answerable questions and
abstention at `generation.answer_threshold` on both kinds. The version is saved under
`.twin/models/answer-selector/vN/` and used (card `use: true`) only if it is not worse than the
defaults on that held-out accuracy, nor in how many answerable held-out questions it answers.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from llmtwin.errors import TwinError
from llmtwin.generation.extractive import (
    DATE,
    FEATURES,
    NAME,
    NUMBER,
    Selector,
    candidates,
    content_stems,
    prose_sentences,
)

Progress = Callable[[str, int, int], None]
_TOKEN = re.compile(r"\S+")
_STOP_LOWER = frozenset("the a an of to in on at by for with from and or is are was were be been it its this that".split())


@dataclass
class AnswerTuning:
    questions: int = 600  # pseudo-questions made (at most)
    l2: float = 20.0  # pull towards the default weights (see tune_answers)
    seed: int = 0


def pseudo_question(sentence: str, rng: random.Random) -> str | None:
    """A question whose answer is a span of `sentence`, or None if it has too few words."""
    words = _TOKEN.findall(sentence.rstrip(".!?:;"))
    if len(words) < 5:
        return None
    text = " ".join(words)
    for pattern, wh in ((NUMBER, "How many"), (DATE, "When"), (NAME, "Who")):
        spans = [m for m in pattern.finditer(text) if m.start() > 0]
        if spans:
            m = rng.choice(spans)
            rest = (text[: m.start()] + " " + text[m.end() :]).split()
            break
    else:
        content = [i for i, w in enumerate(words) if len(w) > 3 and w.lower() not in _STOP_LOWER]
        if not content:
            return None
        drop = rng.choice(content)
        rest = words[:drop] + words[drop + 1 :]
        wh = "What"
    kept = [w for w in rest if w.lower() in _STOP_LOWER or rng.random() > 0.33]
    if len(kept) < 3:
        return None
    return f"{wh} {' '.join(kept)}?".replace(" ,", ",")


def _rows(twin, question: str, sentence: str, chunk_id: str, n_chunks: int, embed):
    """(answerable features, labels) and unanswerable features for one pseudo-question, or None
    when the search does not bring its chunk back among the top `n_chunks`."""
    hits = twin.search(question, k=max(n_chunks + 2, twin.config.retrieval.k))
    top = [h.chunk.chunk_id for h in hits[:n_chunks]]
    if chunk_id not in top:
        return None
    qv = twin.embedder.embed_query(question)
    cands = candidates(question, hits, qv, embed, n_chunks)
    labels = np.asarray([1.0 if s == sentence else 0.0 for s in cands.sentences], np.float32)
    if labels.sum() != 1:
        return None
    others = [h for h in hits if h.chunk.chunk_id != chunk_id and sentence not in h.chunk.text]
    negative = candidates(question, others, qv, embed, n_chunks)
    return cands.features, labels, negative.features


def fit(
    x: np.ndarray, y: np.ndarray, l2: float = 1.0, prior: np.ndarray | None = None, steps: int = 50
) -> tuple[np.ndarray, float]:
    """Logistic regression by Newton's method with a backtracking line search, the weights (not
    the bias) pulled towards `prior` (zeros if None) by an L2 penalty: l2/2 · |w - prior|²."""
    n, d = x.shape
    a = np.hstack([x, np.ones((n, 1), np.float64)])
    centre = np.append(np.zeros(d) if prior is None else np.asarray(prior, np.float64), 0.0)
    reg = np.full(d + 1, l2)
    reg[-1] = 0.0

    def loss(w: np.ndarray) -> float:
        z = a @ w
        return float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * np.sum(reg * (w - centre) ** 2))

    w = centre.copy()
    current = loss(w)
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(a @ w, -30, 30)))
        grad = a.T @ (p - y) + reg * (w - centre)
        hess = (a * (p * (1 - p))[:, None]).T @ a + np.diag(reg + 1e-6)
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-6:
            candidate = w - t * step
            value = loss(candidate)
            if value <= current - 1e-4 * t * float(grad @ step):
                break
            t /= 2
        else:
            break  # no decrease along the Newton direction: converged
        w, previous, current = candidate, current, value
        if previous - current < 1e-8 * max(1.0, abs(current)):
            break
    return w[:-1], float(w[-1])


def _evaluate(selector: Selector, examples: list, threshold: float) -> dict[str, float]:
    """On (features, labels, unanswerable features) per question: how often the best candidate is
    the source sentence, how often it clears `threshold`, and how often an unanswerable question's
    best candidate does not (no candidate at all abstains too) — as `select` decides."""
    right = answered = abstained_neg = 0
    for feats, labels, neg in examples:
        p = selector.probabilities(feats)
        best = int(np.argmax(p))  # the first of equal maxima, as select's stable sort picks
        right += int(labels[best] == 1)
        answered += int(p[best] >= threshold)
        abstained_neg += int(len(neg) == 0 or selector.probabilities(neg).max() < threshold)
    n = max(len(examples), 1)
    return {"top1": round(right / n, 4), "answered_answerable": round(answered / n, 4),
            "abstained_unanswerable": round(abstained_neg / n, 4)}


def tune_answers(twin, cfg: AnswerTuning, progress: Progress | None = None) -> dict:
    """Make pseudo-questions, fit the selector, check it on held-out chunks, publish a version."""
    from llmtwin.models.versions import new_version, publish
    from llmtwin.retrieval.sentences import sentence_vectors

    store = twin.store()
    rng = random.Random(cfg.seed)
    gen = twin.config.generation
    chunk_ids = store.chunks.to_arrow().column("chunk_id").to_pylist()
    if len(chunk_ids) < 20:
        raise TwinError(f"the store has {len(chunk_ids)} chunks; `twin tune answers` needs at least 20")
    rng.shuffle(chunk_ids)
    embed = sentence_vectors(twin.embedder)
    train, held = [], []
    made = tried = 0
    for start in range(0, len(chunk_ids), 64):
        if made >= cfg.questions:
            break
        for chunk in store.get_chunks(chunk_ids[start : start + 64]):
            if made >= cfg.questions:
                break
            sentences = [s for s in prose_sentences(chunk.text) if len(content_stems(s)) >= 4]
            if not sentences:
                continue
            sentence = rng.choice(sentences)
            question = pseudo_question(sentence, rng)
            if question is None:
                continue
            tried += 1
            rows = _rows(twin, question, sentence, chunk.chunk_id, gen.answer_chunks, embed)
            if rows is None:
                continue
            (held if int(chunk.chunk_id[:8], 16) % 5 == 0 else train).append(rows)  # chunk ids are hex
            made += 1
            if progress:
                progress("questions", made, cfg.questions)
    if len(train) < 20 or not held:
        raise TwinError(f"only {made} usable pseudo-questions from {tried} tried: too few to train a selector")
    x = np.vstack([f for f, _, _ in train] + [n for _, _, n in train if len(n)]).astype(np.float64)
    y = np.concatenate([lab for _, lab, _ in train] + [np.zeros(len(n)) for _, _, n in train if len(n)])
    # Pseudo-questions share more words with their sentence than real questions do: unpulled, the
    # fit leans on word overlap (lexical weight 6.7 against 3 on the demo docs) and then abstains on
    # real questions. So the weights are pulled towards the defaults, and the bias is free.
    w, b = fit(x, y, cfg.l2, prior=Selector().vector())
    trained = Selector({f: round(float(v), 4) for f, v in zip(FEATURES, w)}, round(b, 4), "trained")
    check = {"default": _evaluate(Selector(), held, gen.answer_threshold),
             "trained": _evaluate(trained, held, gen.answer_threshold), "held_out": len(held), "train": len(train)}
    # Used only where it is no worse at either job on the held-out questions: picking the source
    # sentence, and answering answerable questions (on disfl_qa's passages a selector that passed
    # the first test alone answered 94 % of held-out pseudo-questions against the defaults' 100 %,
    # and then abstained on 87 % of the set's real answerable questions).
    use = (check["trained"]["top1"] >= check["default"]["top1"]
           and check["trained"]["answered_answerable"] >= check["default"]["answered_answerable"] - 0.02)
    tmp = new_version(twin.project.state_dir, "answer-selector")
    trained.save(tmp / "selector.json")  # before the card: a version is complete once its card exists
    path = publish(tmp, {"kind": "answer-selector", "use": use, "questions": made, "tried": tried,
                         "check": check, "weights": trained.weights, "bias": trained.bias})
    card = {"version": path.name, "path": str(path), "use": use, "check": check, "questions": made}
    return card
