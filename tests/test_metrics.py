"""Our metrics held against the reference packages on the same inputs: rouge-score, sacrebleu,
trec_eval (pytrec-eval-terrier), a hand-computed perplexity; and the statistics (bootstrap, paired tests)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from llmtwin.evaluation import retrieval as R
from llmtwin.evaluation.stats import bootstrap_ci, bootstrap_means, paired_test, sign_test
from llmtwin.evaluation.text import bleu, chrf, qa_scores, rouge, split_sentences

TARGET = "The quick brown fox jumps over the lazy dog.\nIt was running quickly."
PRED = "The quick brown dog jumped over the lazy fox.\nIt runs quick!"
HYPS = ["The quick brown dog jumped over the lazy fox.", "It runs quick!"]
REFS = ["The quick brown fox jumps over the lazy dog.", "It was running quickly."]
TOL = 1e-6


# ---------------------------------------------------------------- ROUGE (rouge-score)
@pytest.mark.parametrize(
    "stem, expected",
    [(False, {"rouge1": 0.72, "rouge2": 0.347826, "rougeL": 0.56}), (True, {"rouge1": 0.88, "rouge2": 0.434783, "rougeL": 0.72})],
)
def test_rouge_issue_vectors(stem, expected):
    out = rouge([PRED], [TARGET], use_stemmer=stem, resamples=0)
    for name, f in expected.items():
        assert out["per_example"][0][name]["fmeasure"] == pytest.approx(f, abs=TOL)
        assert out["fmeasure"][name].value == pytest.approx(f, abs=TOL)


def test_rouge_matches_rouge_score_on_many_pairs():
    from rouge_score import rouge_scorer

    rng = random.Random(0)
    words = "the a quick brown fox dog jumps jumped over lazy running runs it was quickly cats sat mat".split()
    preds, refs = [], []
    for _ in range(60):
        make = lambda: ". ".join(" ".join(rng.choice(words) for _ in range(rng.randint(1, 9))) for _ in range(rng.randint(1, 3)))
        preds.append(make() + rng.choice(["", ".", "!"]))
        refs.append(make() + ".")
    preds += ["", "x", "Ünïcödé 東京"]
    refs += ["some words", "", "東京"]
    for stem in (False, True):
        ours = rouge(preds, refs, use_stemmer=stem, resamples=0)["per_example"]
        ref = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=stem)
        for p, r, row in zip(preds, refs, ours):
            want = ref.score(r, p)
            lsum = ref.score("\n".join(split_sentences(r)), "\n".join(split_sentences(p)))["rougeLsum"]
            for name in ("rouge1", "rouge2", "rougeL"):
                for field in ("precision", "recall", "fmeasure"):
                    assert row[name][field] == pytest.approx(getattr(want[name], field), abs=1e-12)
            assert row["rougeLsum"]["fmeasure"] == pytest.approx(lsum.fmeasure, abs=1e-12)


def test_rougelsum_splits_sentences_without_punkt():
    assert split_sentences("One here. Two there!  Three?\nFour") == ["One here.", "Two there!", "Three?", "Four"]
    # the issue's texts are already one sentence per line: identical to rouge-score on them
    from rouge_score import rouge_scorer

    want = rouge_scorer.RougeScorer(["rougeLsum"]).score(TARGET, PRED)["rougeLsum"].fmeasure
    assert rouge([PRED], [TARGET], resamples=0)["per_example"][0]["rougeLsum"]["fmeasure"] == pytest.approx(want, abs=TOL)
    # on one line, the regex split gives the summary-level LCS over the same two sentences
    flat = rouge([PRED.replace("\n", " ")], [TARGET.replace("\n", " ")], resamples=0)["per_example"][0]
    assert flat["rougeLsum"]["fmeasure"] == pytest.approx(want, abs=TOL)


def test_rouge_empty_conventions():
    rows = rouge(["", "a b", ""], ["a b", "", ""], resamples=0)["per_example"]
    assert all(row[t]["fmeasure"] == 0.0 for row in rows for t in row)


# ---------------------------------------------------------------- BLEU / chrF (sacrebleu)
def test_bleu_issue_vector_and_signature():
    import sacrebleu

    out = bleu(HYPS, REFS, resamples=200)
    assert out["score"].value == pytest.approx(21.7467, abs=5e-5)
    assert out["score"].value == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score, abs=TOL)
    assert out["signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp")
    assert out["score"].low <= out["score"].value <= out["score"].high or out["score"].low <= out["score"].high
    for h, r, s in zip(HYPS, REFS, out["per_example"]):
        assert s == pytest.approx(sacrebleu.sentence_bleu(h, [r]).score, abs=TOL)


def test_bleu_chrf_match_sacrebleu_multi_reference_and_options():
    import sacrebleu

    rng = random.Random(1)
    words = "the cat dog sat on mat a quick brown fox jumps over lazy runs".split()
    hyps = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 12))) for _ in range(40)]
    refs = [[" ".join(rng.choice(words) for _ in range(rng.randint(1, 12))) for _ in range(2)] for _ in range(40)]
    streams = [[r[0] for r in refs], [r[1] for r in refs]]
    assert bleu(hyps, refs, resamples=0)["score"].value == pytest.approx(sacrebleu.corpus_bleu(hyps, streams).score, abs=TOL)
    assert bleu(hyps, refs, resamples=0, lowercase=True)["score"].value == pytest.approx(
        sacrebleu.corpus_bleu(hyps, streams, lowercase=True).score, abs=TOL)
    assert chrf(hyps, refs, resamples=0)["score"].value == pytest.approx(sacrebleu.corpus_chrf(hyps, streams).score, abs=TOL)
    assert chrf(hyps, refs, resamples=0, word_order=2)["score"].value == pytest.approx(
        sacrebleu.corpus_chrf(hyps, streams, word_order=2).score, abs=TOL)
    assert chrf(HYPS, REFS, resamples=0)["score"].value == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score, abs=TOL)
    for h, r, s in zip(hyps, refs, chrf(hyps, refs, resamples=0)["per_example"]):
        assert s == pytest.approx(sacrebleu.sentence_chrf(h, r).score, abs=TOL)


def test_bleu_bootstrap_recomputes_the_corpus_score():
    """The CI resamples sentences' sufficient statistics: a resample of the whole corpus is the corpus."""
    out = bleu(HYPS * 10, REFS * 10, resamples=300)
    ci = out["score"]
    assert ci.low < ci.value < ci.high and ci.resamples == 300
    assert bleu(["", ""], REFS, resamples=0)["score"].value == 0.0


# ---------------------------------------------------------------- EM / F1 (SQuAD)
def test_qa_scores_conventions():
    out = qa_scores(
        ["The Eiffel Tower!", "in Paris, France", "", "I don't know", "something"],
        ["eiffel tower", ["Paris", "Paris, France"], "", "", ""],
        abstained=[False, False, False, True, False],
        resamples=0,
    )
    rows = out["per_example"]
    assert [r["exact_match"] for r in rows] == [1.0, 0.0, 1.0, 1.0, 0.0]
    assert rows[1]["token_f1"] == pytest.approx(0.8)  # "in paris france" vs "paris france"
    assert [r["unanswerable"] for r in rows] == [False, False, True, True, True]
    assert out["exact_match"].value == pytest.approx(0.6)


# ---------------------------------------------------------------- retrieval (trec_eval)
QRELS = {"d1": 2, "d2": 1, "d3": 0, "d5": 1}
RUN = {"d1": 0.5, "d2": 0.9, "d3": 0.9, "d4": 0.1, "d5": 0.05}


def test_trec_eval_issue_vector():
    assert R.rank_run(RUN) == ["d3", "d2", "d1", "d4", "d5"]  # tie d2/d3 at 0.9: doc id descending
    m = R.evaluate_query(QRELS, RUN, ks=(3, 10))
    assert m["ndcg@3"] == pytest.approx(0.520909, abs=TOL)
    assert m["ndcg@10"] == pytest.approx(0.644468, abs=TOL)
    assert m["recall@3"] == pytest.approx(0.666667, abs=TOL)
    assert m["mrr"] == 0.5 and m["precision@3"] == pytest.approx(2 / 3)


def _pytrec(qrels, run, ks):
    import pytrec_eval

    cuts = ",".join(map(str, ks))
    measures = {f"ndcg_cut.{cuts}", f"recall.{cuts}", f"P.{cuts}", "recip_rank", "map", "ndcg"}
    return pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)


def test_retrieval_metrics_match_pytrec_eval_on_random_runs():
    rng = random.Random(7)
    ks = (1, 3, 5, 10, 20)
    qrels, runs = {}, {}
    for q in range(300):
        docs = [f"d{i:02d}" for i in range(rng.randint(1, 30))]
        judged = rng.sample(docs, rng.randint(0, len(docs)))
        qrels[f"q{q}"] = {d: rng.choice([-1, 0, 0, 1, 1, 2, 3]) for d in judged} or {"dx": 1}
        retrieved = rng.sample(docs, rng.randint(0, len(docs)))
        # coarse scores: many ties, which trec_eval breaks by doc id descending
        runs[f"q{q}"] = {d: rng.choice([0.1, 0.2, 0.5, 0.5, 0.9, 1.0, rng.random()]) for d in retrieved}
    want = _pytrec(qrels, runs, ks)
    checked = 0
    for qid, run in runs.items():
        if qid not in want:  # pytrec_eval leaves out queries with an empty run
            assert not run
            continue
        ours = R.evaluate_query(qrels[qid], run, ks)
        w = want[qid]
        for k in ks:
            assert ours[f"ndcg@{k}"] == pytest.approx(w[f"ndcg_cut_{k}"], abs=TOL), (qid, k)
            assert ours[f"recall@{k}"] == pytest.approx(w[f"recall_{k}"], abs=TOL), (qid, k)
            assert ours[f"precision@{k}"] == pytest.approx(w[f"P_{k}"], abs=TOL), (qid, k)
        assert ours["map"] == pytest.approx(w["map"], abs=TOL), qid
        assert ours["mrr"] == pytest.approx(w["recip_rank"], abs=TOL), qid
        assert ours["ndcg"] == pytest.approx(w["ndcg"], abs=TOL), qid
        checked += 1
    assert checked > 250


def test_mrr_at_k_is_recip_rank_of_the_run_cut_at_k():
    rng = random.Random(3)
    for _ in range(100):
        docs = [f"d{i}" for i in range(15)]
        qrels = {d: rng.choice([0, 1]) for d in rng.sample(docs, 6)}
        run = {d: round(rng.random(), 1) for d in docs}
        top5 = dict((d, run[d]) for d in R.rank_run(run)[:5])
        want = _pytrec({"q": qrels}, {"q": top5}, (5,))["q"]["recip_rank"]
        assert R.evaluate_query(qrels, run, (5,))["mrr@5"] == pytest.approx(want, abs=TOL)


def test_retrieval_edge_conventions():
    assert R.evaluate_query({"a": 0}, {"a": 1.0}, (1,)) == {k: 0.0 for k in ("recall@1", "precision@1", "mrr@1", "ndcg@1", "map", "mrr", "ndcg")}
    assert not R.has_relevant({"a": 0, "b": -1}) and R.has_relevant({"a": 2})
    empty = R.evaluate_query({"a": 1}, {}, (1, 5))
    assert all(v == 0.0 for v in empty.values())
    assert R.evaluate_query({"a": 1}, {"b": 1.0}, (5,))["precision@5"] == 0.0
    assert R.evaluate_query({"a": 1}, {"a": 1.0}, (5,))["precision@5"] == 0.2  # divides by k, as trec_eval
    assert R.first_relevant_rank(["x", "a"], {"a": 1}) == 2 and R.first_relevant_rank([], {"a": 1}) is None
    # the list functions kept for bench/retrieval.py
    assert R.ndcg_at_k(["d3", "d2", "d1"], QRELS, 3) == pytest.approx(0.520909, abs=TOL)


# ---------------------------------------------------------------- statistics
def test_bootstrap_means_and_ci():
    rng = np.random.default_rng(0)
    x = rng.normal(0.5, 0.1, size=2000)
    out = bootstrap_means({"x": x, "y": x * 2}, resamples=2000, seed=1)
    se = x.std(ddof=1) / math.sqrt(len(x))
    assert out["x"].value == pytest.approx(x.mean())
    assert out["x"].high - out["x"].low == pytest.approx(2 * 1.96 * se, rel=0.1)
    assert out["y"].low == pytest.approx(2 * out["x"].low)  # one resampling shared by all columns
    again = bootstrap_means({"x": x}, resamples=2000, seed=1)["x"]
    assert (again.low, again.high) == pytest.approx((out["x"].low, out["x"].high), abs=1e-12)  # fixed seed
    ci = bootstrap_ci(x, np.median, resamples=500)
    assert ci.low < np.median(x) < ci.high
    assert bootstrap_means({"x": [1.0]}, resamples=100)["x"].low == 1.0


def test_paired_tests():
    rng = np.random.default_rng(0)
    a = rng.uniform(size=400)
    b_same = a + rng.normal(0, 0.05, size=400)
    b_better = a + 0.05 + rng.normal(0, 0.05, size=400)
    for method in ("bootstrap", "permutation"):
        better = paired_test(a, b_better, method=method, resamples=2000)
        assert better.p_value < 0.001 and better.low > 0 and better.delta == pytest.approx(0.05, abs=0.01)
        same = paired_test(a, b_same, method=method, resamples=2000)
        assert same.p_value > 0.05 and same.low < 0 < same.high or same.p_value > 0.01
        assert paired_test(a, a, method=method, resamples=100).p_value == 1.0
    # permutation against an exact enumeration of the 2^n sign flips on a tiny sample
    d = np.array([0.3, -0.1, 0.4, 0.2, 0.25, -0.05, 0.15, 0.35])
    obs = abs(d.mean())
    flips = np.array([[1 if (m >> i) & 1 else -1 for i in range(len(d))] for m in range(2 ** len(d))])
    exact = np.mean(np.abs(flips @ d / len(d)) >= obs - 1e-12)
    p = paired_test(np.zeros_like(d), d, method="permutation", resamples=20000).p_value
    assert p == pytest.approx(exact, abs=0.01)
    with pytest.raises(ValueError):
        paired_test([1, 2], [1], method="bootstrap")


# ---------------------------------------------------------------- perplexity (packaged SmolLM2)
@pytest.fixture
def one_thread():
    """Tiny forward passes: one torch thread is faster, and steady on a loaded 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_perplexity_against_manual_computation(hf_llm, one_thread):
    import torch

    from llmtwin.evaluation.perplexity import perplexity, token_nlls

    text = "The cat sat on the mat. It was a sunny day and the birds were singing."
    tok, model = hf_llm.tokenizer, hf_llm.model
    ids = [tok.bos_token_id] + tok.encode(text, add_special_tokens=False)
    x = torch.tensor([ids])
    with torch.inference_mode():
        loss = model(x, labels=x).loss.item()  # mean NLL of tokens 1..n-1 given their prefix
    out = perplexity(hf_llm, [text, ""], resamples=0)
    assert out["ppl_token"].value == pytest.approx(math.exp(loss), rel=1e-4)
    n_bytes = len(text.encode())
    assert out["ppl_byte"].value == pytest.approx(math.exp(loss * (len(ids) - 1) / n_bytes), rel=1e-4)
    assert out["bits_per_byte"].value == pytest.approx(loss * (len(ids) - 1) / n_bytes / math.log(2), rel=1e-4)
    assert out["per_text"][1]["tokens"] == 0 and out["per_text"][1]["ppl_token"] is None
    # sliding window, stride 1: each token predicted from at most window-1 preceding tokens
    text = "The cat sat on the mat, then slept."  # short: one forward pass per token below
    ids = [tok.bos_token_id] + tok.encode(text, add_special_tokens=False)
    window = 4
    manual = []
    with torch.inference_mode():
        for i in range(1, len(ids)):
            ctx = torch.tensor([ids[max(0, i - window + 1) : i + 1]])
            manual.append(-torch.log_softmax(model(ctx).logits[0, -2].float(), -1)[ids[i]].item())
    nlls, _ = token_nlls(hf_llm, text, window=window, stride=1)
    assert len(nlls) == len(manual) == len(ids) - 1
    assert max(abs(a - b) for a, b in zip(nlls, manual)) < 1e-3
    full, _ = token_nlls(hf_llm, text)
    strided, _ = token_nlls(hf_llm, text, window=5, stride=3)
    assert len(strided) == len(full) == len(ids) - 1  # every token scored exactly once
    assert strided[:4] == pytest.approx(full[:4], abs=1e-3)  # the first window sees the same context
    assert sum(strided) != pytest.approx(sum(full), abs=1e-3)


def test_sign_test_matches_scipy_binomtest():
    from scipy.stats import binomtest

    for n in (1, 4, 12, 30):
        for wins in range(n + 1):
            assert sign_test(wins, n) == pytest.approx(binomtest(wins, n, 0.5, alternative="greater").pvalue, abs=1e-12)
    assert sign_test(0, 0) == 1.0
