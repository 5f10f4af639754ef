"""Every kind of bad pool gets one clear message naming file, row and field, exit status 2, no traceback,
and no output left behind; ``--on-invalid skip`` drops bad rows and reports them by reason."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import alpaca_rows, run_cli, write_jsonl

GOOD = alpaca_rows(1)[0]


def _select(pool: Path | str, out: Path, *extra: str):
    return run_cli("select", "--pool", str(pool), "--selector", "random", "--budget", "1", "--out", str(out), *extra)


def _assert_clear_error(result, out: Path, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("selectbench: error: ")
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)
    assert not out.exists(), "a failed run must leave no output behind"


@pytest.mark.parametrize(
    ("lines", "fragments"),
    [
        ([GOOD, '{"instruction": "x", "output": '], ["line 2", "malformed JSON"]),
        ([GOOD, {"instruction": "Say hi"}], ["line 2", "field 'output'", "missing"]),
        (
            [GOOD, {"instruction": "Say hi", "output": 42}],
            ["line 2", "field 'output'", "expected a string, found int"],
        ),
        ([GOOD, {"instruction": "   ", "output": "ok"}], ["line 2", "field 'instruction'", "is empty"]),
        ([GOOD, {"instruction": "Say hi", "output": ""}], ["line 2", "field 'output'", "is empty"]),
        (
            [{**GOOD, "id": "a"}, {"instruction": "B", "output": "b", "id": "a"}],
            ["line 2", "field 'id'", "duplicate id 'a'"],
        ),
        ([{"question": "q", "answer": "a"}], ["line 1", "unknown format", "['answer', 'question']", "--columns"]),
        ([GOOD, "[1, 2]"], ["line 2", "expected an object"]),
        ([{"messages": [{"role": "user", "content": "hi"}]}], ["line 1", "field 'messages'", "assistant"]),
        (
            [{"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]}],
            ["line 1", "field 'messages[0].role'", "unknown role 'robot'"],
        ),
    ],
    ids=[
        "malformed-json",
        "missing-field",
        "non-string",
        "empty-instruction",
        "empty-response",
        "duplicate-id",
        "unknown-format",
        "not-an-object",
        "chat-without-answer",
        "unknown-role",
    ],
)
def test_bad_jsonl_rows_name_file_line_and_field(tmp_path: Path, lines: list, fragments: list[str]) -> None:
    pool = write_jsonl(tmp_path / "pool.jsonl", lines)
    out = tmp_path / "out"
    _assert_clear_error(_select(pool, out), out, str(pool), *fragments)


def test_non_utf8_bytes_name_the_line(tmp_path: Path) -> None:
    pool = tmp_path / "latin1.jsonl"
    pool.write_bytes(json.dumps(GOOD).encode() + b"\n" + '{"instruction": "caf\xe9", "output": "x"}'.encode("latin-1"))
    out = tmp_path / "out"
    _assert_clear_error(_select(pool, out), out, str(pool), "line 2", "not valid UTF-8")


def test_non_utf8_csv_names_the_line(tmp_path: Path) -> None:
    pool = tmp_path / "p.csv"
    pool.write_bytes(b"instruction,output\nfine,ok\nna\xefve,x\n")
    out = tmp_path / "out"
    _assert_clear_error(_select(pool, out), out, str(pool), "line 3", "not valid UTF-8")


def test_csv_row_errors_name_row_and_line(tmp_path: Path) -> None:
    pool = tmp_path / "p.csv"
    pool.write_text("instruction,output\nfine,ok\nempty answer,\n", encoding="utf-8")
    out = tmp_path / "out"
    _assert_clear_error(_select(pool, out), out, "row 2 (line 3)", "field 'output'", "is empty")


def test_malformed_json_list_names_the_line(tmp_path: Path) -> None:
    pool = tmp_path / "p.json"
    pool.write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c" "output": "d"}\n]\n')
    out = tmp_path / "out"
    _assert_clear_error(_select(pool, out), out, str(pool), "line 3", "malformed JSON")


def test_json_list_rows_are_numbered(tmp_path: Path) -> None:
    pool = tmp_path / "p.json"
    pool.write_text(json.dumps([GOOD, {"instruction": "a", "output": ["b"]}]))
    out = tmp_path / "out"
    _assert_clear_error(_select(pool, out), out, "row 2", "field 'output'", "found list")


def test_missing_file_unknown_suffix_folder_and_unreadable_file(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _assert_clear_error(_select(tmp_path / "nope.jsonl", out), out, "nope.jsonl", "no such file")
    (tmp_path / "pool.txt").write_text("x")
    _assert_clear_error(_select(tmp_path / "pool.txt", out), out, "unknown file type '.txt'")
    (tmp_path / "folder.jsonl").mkdir()
    _assert_clear_error(_select(tmp_path / "folder.jsonl", out), out, "is a folder")
    locked = write_jsonl(tmp_path / "locked.jsonl", [GOOD])
    locked.chmod(0)
    if os.access(locked, os.R_OK):  # root reads anything: a file it cannot read is then a broken parquet
        bad = tmp_path / "broken.parquet"
        bad.write_bytes(b"not parquet at all")
        _assert_clear_error(_select(bad, out), out, "broken.parquet", "not a readable Parquet file")
    else:
        _assert_clear_error(_select(locked, out), out, "permission denied")


def test_skip_drops_bad_rows_and_reports_counts_by_reason(tmp_path: Path) -> None:
    rows = [
        *alpaca_rows(5),
        '{"instruction": broken',
        {"instruction": "no answer"},
        {"instruction": "x", "output": "  "},
        {"instruction": "y", "output": "  "},
    ]
    pool = write_jsonl(tmp_path / "p.jsonl", rows)
    out = tmp_path / "out"
    result = run_cli(
        "select",
        "--pool",
        str(pool),
        "--selector",
        "random",
        "--budget",
        "5",
        "--out",
        str(out),
        "--on-invalid",
        "skip",
    )
    assert result.returncode == 0, result.stderr
    assert (
        "kept 5 of 9 rows; skipped 4 (2 empty response, 1 malformed JSON, 1 missing field 'output')" in result.stderr
    )
    meta = json.loads((out / "meta.json").read_text())
    assert meta["pool"]["load"]["skipped"] == {"malformed JSON": 1, "missing field 'output'": 1, "empty response": 2}
    assert len((out / "selection.jsonl").read_text().splitlines()) == 5


def test_a_pool_where_every_row_is_bad_is_an_error_even_when_skipping(tmp_path: Path) -> None:
    pool = write_jsonl(tmp_path / "p.jsonl", [{"instruction": "a", "output": ""}, {"question": "q"}])
    out = tmp_path / "out"
    _assert_clear_error(
        _select(pool, out, "--on-invalid", "skip"),
        out,
        "no usable rows",
        "1 empty response, 1 missing field 'instruction'",
    )


def test_bad_usage_exits_2_with_one_message(tmp_path: Path) -> None:
    pool = write_jsonl(tmp_path / "p.jsonl", alpaca_rows(5))
    out = tmp_path / "out"
    _assert_clear_error(
        run_cli("select", "--pool", str(pool), "--selector", "longst", "--budget", "2", "--out", str(out)),
        out,
        "unknown selector 'longst'",
        "Did you mean 'longest'",
    )
    _assert_clear_error(
        run_cli("select", "--pool", str(pool), "--selector", "longest", "--budget", "6", "--out", str(out)),
        out,
        "budget 6 is larger than the pool (5 records)",
    )
    _assert_clear_error(
        run_cli("select", "--pool", str(pool), "--selector", "longest", "--budget", "1.5", "--out", str(out)),
        out,
        "fractional budget must be in (0, 1]",
    )
    _assert_clear_error(
        run_cli(
            "select",
            "--pool",
            str(pool),
            "--selector",
            "longest",
            "--param",
            "units=chars",
            "--budget",
            "2",
            "--out",
            str(out),
        ),
        out,
        "no parameter 'units'",
        "did you mean 'unit'",
    )
    _assert_clear_error(
        run_cli(
            "select",
            "--pool",
            str(pool),
            "--selector",
            "longest",
            "--param",
            "unit=pages",
            "--budget",
            "2",
            "--out",
            str(out),
        ),
        out,
        "unit must be one of",
    )
