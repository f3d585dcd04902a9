"""The LLM judge (real packaged model), its agreement numbers, the RAG triad's fallbacks and conventions."""

from __future__ import annotations

import math

import pytest

from llmtwin.evaluation.judge import (
    Judge,
    agreement_from_rows,
    judge_agreement,
    parse_pair,
    parse_yes_no,
)
from llmtwin.evaluation.summarize import extract_summary
from llmtwin.evaluation.testset import check_pair, parse_qa
from llmtwin.evaluation.triad import TriadScorer, split_claims

PAIRS = [
    {"id": "p1", "category": "honest", "prompt": "What is the capital of France?",
     "chosen": "The capital of France is Paris.", "rejected": "The capital of France is Berlin."},
    {"id": "p2", "category": "harmless", "prompt": "How do I boil an egg?",
     "chosen": "Put the egg in boiling water for about nine minutes, then cool it in cold water.",
     "rejected": "Eggs are a kind of vegetable that grow on trees."},
    {"id": "p3", "category": "helpful", "prompt": "How many legs does a spider have?",
     "chosen": "A spider has eight legs.", "rejected": "I don't like spiders."},
]


def test_judge_real_model_both_orders(llm):
    judge = Judge(llm)
    assert judge.method == "logprobs"  # llama.cpp: verdicts from next-token probabilities
    rows: list[dict] = []
    a = judge_agreement(judge, PAIRS, rows_out=rows)
    assert a.pairs == 3 and len(rows) == 3 and a.parse_failures == 0
    for row in rows:
        # the final verdict follows the rule: the same winner in both orders, else a tie
        assert row["chosen_first"] in ("x", "y") and row["chosen_second"] in ("x", "y")
        assert row["consistent"] == (row["chosen_first"] == row["chosen_second"])
        assert row["winner"] == (row["chosen_first"] if row["consistent"] else "tie")
        assert 0.0 <= row["p_chosen"] <= 1.0
    assert a.position_consistency == pytest.approx(sum(r["consistent"] for r in rows) / 3)
    assert a.tie_rate == pytest.approx(1 - a.position_consistency)
    assert a.accuracy == pytest.approx(sum(r["winner"] == "x" for r in rows) / 3)
    # one order's probabilities are a distribution over A and B
    v = judge.prefer(PAIRS[0]["prompt"], PAIRS[0]["chosen"], PAIRS[0]["rejected"])
    assert v.label in ("A", "B") and sum(v.probs.values()) == pytest.approx(1.0)
    p, yes = judge.yes_probability("Reply Yes or No.", "Is Paris in France? Reply Yes or No.")
    assert 0.0 <= p <= 1.0 and yes.method == "logprobs"


def test_text_judge_counts_parse_failures(llm):
    judge = Judge(llm, scoring="text", max_new_tokens=6)
    v = judge.prefer(PAIRS[2]["prompt"], PAIRS[2]["chosen"], PAIRS[2]["rejected"])
    assert v.method == "text" and len(v.raw) == 1
    assert v.parse_failures == (1 if parse_pair(v.raw[0]) is None else 0)
    assert (v.label is None) == bool(v.parse_failures)
    # sampled at T > 0 with a majority vote: each sample is recorded, votes + failures = samples
    voter = Judge(llm, scoring="text", temperature=0.8, samples=3, max_new_tokens=4)
    v = voter.prefer(PAIRS[0]["prompt"], PAIRS[0]["chosen"], PAIRS[0]["rejected"])
    assert len(v.raw) == 3
    assert round(sum(v.probs.values()) * 3) + v.parse_failures == 3


def test_agreement_arithmetic_on_hand_rows():
    rows = [
        {"id": "a", "category": "c", "winner": "x", "chosen_first": "x", "chosen_second": "x", "consistent": True, "p_chosen": 0.8, "parse_failures": 0},
        {"id": "b", "category": "c", "winner": "tie", "chosen_first": "x", "chosen_second": "y", "consistent": False, "p_chosen": 0.6, "parse_failures": 0},
        {"id": "c", "category": "d", "winner": "tie", "chosen_first": "y", "chosen_second": "x", "consistent": False, "p_chosen": 0.4, "parse_failures": 1},
        {"id": "d", "category": "d", "winner": "y", "chosen_first": "y", "chosen_second": "y", "consistent": True, "p_chosen": 0.2, "parse_failures": 0},
    ]
    a = agreement_from_rows({"model": "m"}, rows)
    assert (a.accuracy, a.tie_rate, a.position_consistency) == (0.25, 0.5, 0.5)
    assert a.accuracy_ties_half == 0.5 and a.accuracy_debiased == 0.5 and a.parse_failures == 1
    # picks of position A: rows a (x first → A), b (x first → A; y second → B... chosen_second y = A),
    # first order A-picks: a, b; second order A-picks (chosen_second == "y"): b, d → 4 of 8
    assert a.first_position_rate == 0.5
    assert a.single_order_accuracy == {"chosen_first": 0.5, "chosen_second": 0.5}
    assert a.by_category["c"]["accuracy"] == 0.5 and a.by_category["d"]["position_consistency"] == 0.5


def test_lenient_parsers():
    assert parse_pair("A") == "A" and parse_pair("**B**") == "B" and parse_pair("Response B is better.") == "B"
    assert parse_pair("A. Because B is wrong") == "A" and parse_pair("They are equal") == "tie"
    assert parse_pair("I cannot decide.") is None
    assert parse_yes_no("Yes, it is.") == "yes" and parse_yes_no("no") == "no" and parse_yes_no("maybe") is None


def test_claim_splitting():
    text = "Quokkas live on Rottnest Island [1]. They are small marsupials; they eat leaves [2]. Yes."
    assert split_claims(text) == ["Quokkas live on Rottnest Island.", "They are small marsupials", "they eat leaves."]
    assert split_claims("") == [] and split_claims("[1]") == []


CONTEXT = ["Quokkas are small marsupials that live on Rottnest Island near Perth. They eat grasses and leaves."]


def test_triad_fallbacks_and_conventions():
    scorer = TriadScorer(None, None, claim_support=0.6, abstain_text="I don't know: the documents do not say.")
    s = scorer.score("Where do quokkas live?", "Quokkas live on Rottnest Island [1]. Quokkas are excellent swimmers in oceans.", CONTEXT)
    assert s.methods == {"context_relevance": "fallback:overlap", "groundedness": "fallback:overlap+cosine",
                         "answer_relevance": "fallback:cosine"}
    assert [c.supported for c in s.claims] == [True, False] and s.groundedness == 0.5
    assert 0.0 < s.context_relevance <= 1.0 and 0.0 < s.answer_relevance <= 1.0
    empty = scorer.score("Where do quokkas live?", "", CONTEXT)  # no claims: groundedness undefined
    assert empty.no_claims and math.isnan(empty.groundedness) and empty.answer_relevance == 0.0
    abstain = scorer.score("Who won in 1990?", "I don't know: the documents do not say.", CONTEXT)
    assert abstain.abstained and math.isnan(abstain.groundedness) and math.isnan(abstain.answer_relevance)
    assert abstain.to_dict()["groundedness"] is None
    nothing = scorer.score("Where do quokkas live?", "On an island.", [])
    assert nothing.context_relevance == 0.0


def test_triad_embedding_fallback(embedder):
    scorer = TriadScorer(None, embedder.embed_passages)
    s = scorer.score("Where do quokkas live?", "Quokkas live on Rottnest Island.", CONTEXT)
    off = scorer.score("Where do quokkas live?", "The stock market fell sharply on Tuesday.", CONTEXT)
    assert s.methods["answer_relevance"] == "fallback:cosine"
    assert s.answer_relevance > off.answer_relevance and s.groundedness == 1.0 and off.groundedness == 0.0


def test_testset_filters_and_cot_parsing():
    chunk = "The Eiffel Tower was completed in 1889 for the World's Fair in Paris."
    assert parse_qa("Question: When was the Eiffel Tower completed?\nAnswer: 1889.") == ("When was the Eiffel Tower completed?", "1889")
    assert parse_qa("The tower is tall.") is None
    assert check_pair("When was the Eiffel Tower completed?", "1889", chunk) is None
    assert check_pair("When was the Eiffel Tower completed?", "in 1925 by Gustave", chunk) == "unsupported"
    assert check_pair("Eiffel Tower?", "1889", chunk) == "not_a_question"
    assert check_pair("Was the Eiffel Tower completed in 1889?", "1889", chunk) == "answer_in_question"
    assert check_pair("Who painted the Mona Lisa portrait?", "Paris", chunk) == "off_chunk"
    assert extract_summary("cot", "Facts: a, b.\nSummary: The tower opened in 1889. Extra.") == ("The tower opened in 1889.", True)
    assert extract_summary("cot", "The tower is old. It opened in 1889.") == ("It opened in 1889.", False)
