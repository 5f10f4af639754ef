"""The CLI contract: select, score and ls, as real subprocesses."""

from __future__ import annotations

import json
import re
from pathlib import Path

from conftest import run_cli

from selectbench.data import load_pool


def _alpaca_file(path: Path, n: int = 120) -> Path:
    """An Alpaca-format JSON list with varied lengths and deliberate ties in length."""
    filler = "The quick brown fox, being quick, jumps over the lazy dog; again and again!"
    rows = []
    for i in range(n):
        words = filler.split()
        response = " ".join(words[: 1 + (i * 37) % len(words)] * (1 + (i * 13) % 5))
        rows.append(
            {
                "instruction": f"Write about item {i}.",
                "input": "" if i % 4 else f"Item {i}",
                "output": response,
                "source": f"s{i % 3}",
            }
        )
    path.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return path


def test_select_longest_picks_exactly_the_longest_by_words_and_is_byte_identical(tmp_path: Path) -> None:
    pool_file = _alpaca_file(tmp_path / "alpaca.json")
    rows = json.loads(pool_file.read_text())
    for out in ("a", "b"):
        result = run_cli(
            "select", "--pool", str(pool_file), "--selector", "longest", "--budget", "50", "--out", str(tmp_path / out)
        )
        assert result.returncode == 0, result.stderr
    first = (tmp_path / "a" / "selection.jsonl").read_bytes()
    assert first == (tmp_path / "b" / "selection.jsonl").read_bytes()

    counts = [len(re.findall(r"\w+|[^\w\s]", r["output"])) for r in rows]
    expected = sorted(range(len(rows)), key=lambda i: (-counts[i], i))[:50]
    assert len(set(counts)) < len(counts), "the fixture must contain ties"
    lines = [json.loads(line) for line in first.decode().splitlines()]
    assert [line["response"] for line in lines] == [rows[i]["output"] for i in expected]
    assert [line["meta"]["rank"] for line in lines] == list(range(1, 51))
    assert lines[0]["meta"]["source"] == rows[expected[0]]["source"]
    assert lines[0]["meta"]["score"] == counts[expected[0]]
    assert set(lines[0]) == {"id", "instruction", "input", "response", "meta"}


def test_select_meta_json_records_everything_needed_to_reproduce(tmp_path: Path) -> None:
    pool_file = _alpaca_file(tmp_path / "alpaca.json", 40)
    out = tmp_path / "sel"
    result = run_cli(
        "select",
        "--pool",
        str(pool_file),
        "--selector",
        "random",
        "--budget",
        "0.25",
        "--seed",
        "3",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    meta = json.loads((out / "meta.json").read_text())
    pool = load_pool(pool_file)
    assert meta["selector"] == "random" and meta["params"] == {} and meta["seed"] == 3
    assert meta["budget"] == {"given": 0.25, "resolved": 10, "selected": 10}
    assert meta["pool"]["fingerprint"] == pool.fingerprint and meta["pool"]["n"] == 40
    assert meta["ids"] == [json.loads(line)["id"] for line in (out / "selection.jsonl").read_text().splitlines()]
    assert {"load", "select"} <= set(meta["timings"])
    assert {"python", "selectbench", "numpy", "pyarrow", "datasets"} <= set(meta["versions"])
    assert (out / "DONE").exists()


def test_a_selection_file_loads_back_as_a_pool_with_its_metadata(tmp_path: Path) -> None:
    pool_file = _alpaca_file(tmp_path / "alpaca.json", 30)
    out = tmp_path / "sel"
    assert (
        run_cli(
            "select", "--pool", str(pool_file), "--selector", "longest", "--budget", "5", "--out", str(out)
        ).returncode
        == 0
    )
    subset = load_pool(out / "selection.jsonl")
    original = load_pool(pool_file)
    assert subset.format == "canonical"
    meta = json.loads((out / "meta.json").read_text())
    assert subset.ids == meta["ids"]
    assert subset[0]["response"] == original.records([original.ids.index(meta["ids"][0])])[0]["response"]
    assert subset[0]["meta"]["rank"] == 1 and "source" in subset[0]["meta"]


def test_score_writes_one_line_per_record_in_pool_order(tmp_path: Path) -> None:
    pool_file = _alpaca_file(tmp_path / "alpaca.json", 25)
    out = tmp_path / "scores.jsonl"
    result = run_cli(
        "score", "--pool", str(pool_file), "--selector", "longest", "--param", "unit=chars", "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    rows = json.loads(pool_file.read_text())
    assert [line["id"] for line in lines] == load_pool(pool_file).ids
    assert [line["score"] for line in lines] == [float(len(r["output"])) for r in rows]


def test_score_with_a_selector_that_does_not_score_is_an_error(tmp_path: Path) -> None:
    pool_file = _alpaca_file(tmp_path / "alpaca.json", 5)
    result = run_cli("score", "--pool", str(pool_file), "--selector", "random", "--out", str(tmp_path / "s.jsonl"))
    assert result.returncode == 2 and "does not score records" in result.stderr
    assert not (tmp_path / "s.jsonl").exists()


def test_ls_selectors_lists_the_builtins() -> None:
    result = run_cli("ls", "selectors")
    assert result.returncode == 0
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert {"random", "longest"} <= set(names)


def test_param_values_are_yaml_scalars() -> None:
    from selectbench.config import parse_assignments

    assert parse_assignments(["max_length=512", "ratio=0.5", "flag=true", "name=alpaca", "empty="]) == {
        "max_length": 512,
        "ratio": 0.5,
        "flag": True,
        "name": "alpaca",
        "empty": "",
    }
