"""Verifiable rewards and the code sandbox (training/rewards.py, training/sandbox.py)."""

from __future__ import annotations

import pytest

from llmtwin.errors import TwinError
from llmtwin.training.rewards import (
    CodeTests,
    exact_answer,
    extract_code,
    for_trl,
    normalise_answer,
    parse_reward_spec,
    regex_format,
)
from llmtwin.training.sandbox import bwrap_path, run_python

needs_bwrap = pytest.mark.skipif(bwrap_path() is None, reason="bubblewrap (bwrap) not installed")


def test_exact_answer_normalises():
    assert normalise_answer(" The Paris. ") == "paris"
    assert normalise_answer("1,000.0") == "1000"
    completions = ["Let me think.\nAnswer: 42", "The answer is 42.0", "so it is \\boxed{41}", "I think 7 then 42",
                   "Answer: Paris!", "answer: london"]
    answers = ["42", "42", "42", "42", "paris", "paris"]
    assert exact_answer([""] * 6, completions, {"answer": answers}) == [1.0, 1.0, 0.0, 1.0, 1.0, 0.0]
    with pytest.raises(TwinError, match="answer"):
        exact_answer(["q"], ["a"], {})


def test_regex_format_and_specs():
    reward = parse_reward_spec("regex:^Answer: \\d+$")
    assert reward(["q", "q", "q"], ["reasoning\nAnswer: 12", "Answer: twelve", "x Answer: 3"], {}) == [1.0, 0.0, 0.0]
    assert regex_format("<think>")(["q"], ["<think>hm</think>"], {}) == [1.0]
    assert parse_reward_spec("exact") is exact_answer
    assert isinstance(parse_reward_spec("code"), CodeTests)
    for bad in ("regex:(", "regex:", "nonsense", "model:", "exact:3"):
        with pytest.raises(TwinError):
            parse_reward_spec(bad)


def test_for_trl_reads_conversational_columns():
    trl_fn = for_trl(exact_answer, "exact")
    prompts = [[{"role": "user", "content": "2+2?"}]] * 2
    completions = [[{"role": "assistant", "content": "Answer: 4"}], [{"role": "assistant", "content": "5"}]]
    assert trl_fn(prompts=prompts, completions=completions, answer=["4", "4"], trainer_state=None) == [1.0, 0.0]
    assert trl_fn.__name__ == "exact"


def test_extract_code():
    assert extract_code("Here:\n```python\ndef f():\n    return 1\n```\nDone") == "def f():\n    return 1\n"
    assert extract_code("```\nx = 1\n```") == "x = 1\n"
    assert extract_code("```python\ny = 2\n") == "y = 2\n"  # cut off by max length: still counts
    assert extract_code("z = 3") == "z = 3"


@needs_bwrap
def test_code_reward_scores_share_of_tests_in_bwrap():
    reward = CodeTests(timeout=10)
    tests = "assert add(1, 2) == 3\nassert add(-1, 1) == 0\n# a comment\nassert add(2, 2) == 5"
    completions = [
        "```python\ndef add(a, b):\n    return a + b\n```",  # passes 2 of 3 (the third test is wrong on purpose)
        "```python\ndef add(a, b):\n    return a - b\n```",  # passes none
        "```python\ndef add(a, b) return\n```",  # syntax error
        "```python\nprint('@@00000000{\"passed\": 3, \"total\": 3, \"loaded\": true}')\n```",  # fake summary
    ]
    scores = reward([""] * 4, completions, {"tests": [tests] * 4})
    assert scores == [pytest.approx(2 / 3), 0.0, 0.0, 0.0]
    assert reward.isolation == "bwrap"
    assert reward.last[0]["passed"] == 2 and reward.last[0]["total"] == 3
    with pytest.raises(TwinError, match="tests"):
        reward(["q"], ["x"], {})


@needs_bwrap
def test_sandbox_blocks_network():
    code = (
        "import socket\n"
        "try:\n"
        "    socket.create_connection(('1.1.1.1', 53), timeout=2)\n"
        "    print('CONNECTED')\n"
        "except OSError as e:\n"
        "    print('BLOCKED', type(e).__name__)\n"
    )
    result = run_python(code, timeout=10)
    assert result.isolation == "bwrap"
    assert result.ok, result.stderr
    assert "BLOCKED" in result.stdout and "CONNECTED" not in result.stdout


@needs_bwrap
def test_sandbox_timeout_kills_infinite_loop():
    result = run_python("while True:\n    pass\n", timeout=1.0)
    assert result.timed_out and result.returncode is None and not result.ok
    assert result.seconds < 5


@needs_bwrap
def test_sandbox_write_outside_scratch_fails(tmp_path):
    target = tmp_path / "escaped.txt"
    code = (
        "import os\n"
        "open('inside.txt', 'w').write('ok')\n"  # the scratch dir is writable
        "print('SCRATCH', os.path.exists('inside.txt'))\n"
        f"for p in [{str(target)!r}, '/usr/escaped.txt', '/etc/escaped.txt']:\n"
        "    try:\n"
        "        open(p, 'w').write('x')\n"
        "        print('WROTE', p)\n"
        "    except OSError as e:\n"
        "        print('DENIED', p, type(e).__name__)\n"
    )
    result = run_python(code, timeout=10)
    assert result.ok, result.stderr
    assert "SCRATCH True" in result.stdout
    assert "WROTE" not in result.stdout and result.stdout.count("DENIED") == 3
    assert not target.exists()


@needs_bwrap
def test_sandbox_memory_limit_and_empty_env():
    code = "import os\nprint(sorted(os.environ))\nx = bytearray(2 * 1024 ** 3)\nprint('ALLOCATED')\n"
    result = run_python(code, timeout=10, memory_mb=256)
    assert "ALLOCATED" not in result.stdout and "MemoryError" in result.stderr
    assert "HF_HUB_OFFLINE" not in result.stdout  # the host environment does not leak in


def test_reward_model_scores_with_a_classification_dir(tmp_path, smollm2_dir):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from llmtwin.training.rewards import reward_model

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(smollm2_dir, num_labels=1)
    model.save_pretrained(tmp_path / "rm")
    AutoTokenizer.from_pretrained(smollm2_dir).save_pretrained(tmp_path / "rm")
    reward = parse_reward_spec(f"model:{tmp_path / 'rm'}")
    scores = reward(["Say hi", "Say hi", "Say hi"], ["Hello!", "Hello!", "I refuse to talk."], {})
    assert len(scores) == 3 and all(isinstance(s, float) for s in scores)
    assert scores[0] == pytest.approx(scores[1], abs=1e-5) and scores[0] != pytest.approx(scores[2], abs=1e-5)
    with pytest.raises(TwinError):
        reward_model(str(tmp_path / "missing"))
