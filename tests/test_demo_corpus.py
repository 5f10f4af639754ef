"""The bundled demo corpus: counts, disjointness, label truth (code responses executed) and intrinsic metrics."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import run_cli

from selectbench.data import load_pool
from selectbench.data.codeblocks import extract_program
from selectbench.data.labels import intrinsic_metrics
from selectbench.selectors.baselines import count_words

DEMO = Path(__file__).resolve().parents[1] / "selectbench" / "data" / "demo"
STYLES = ("human", "referenced", "direct")


@pytest.fixture(scope="module")
def pool_records() -> list[dict]:
    pool = load_pool("demo")
    return pool.records(range(len(pool)))


def _jsonl(name: str) -> list[dict]:
    return [json.loads(line) for line in (DEMO / name).read_text(encoding="utf-8").splitlines()]


def _norm(text: str) -> str:
    return re.sub(r"\W+", " ", text.lower()).strip()


def test_pool_shape_and_labels(pool_records):
    assert len(pool_records) >= 400
    domains = Counter(r["meta"]["domain"] for r in pool_records)
    assert set(domains) == {"code", "open"}
    assert abs(domains["code"] - domains["open"]) <= 0.1 * len(pool_records)
    flawed = sum(r["meta"]["quality"] == "flawed" for r in pool_records) / len(pool_records)
    assert 0.18 <= flawed <= 0.32
    for style in STYLES:
        group = [r for r in pool_records if r["meta"]["style"] == style]
        assert len(group) >= 100
        assert 0.12 <= sum(r["meta"]["quality"] == "flawed" for r in group) / len(group) <= 0.35
    for record in pool_records:
        assert record["meta"]["quality"] in ("good", "flawed")
        assert ("tests" in record["meta"]) == (record["meta"]["domain"] == "code")


def test_length_does_not_reveal_labels(pool_records):
    """Every (style, quality) group has short and long responses."""
    groups: dict[tuple, list[int]] = {}
    for r in pool_records:
        groups.setdefault((r["meta"]["style"], r["meta"]["quality"]), []).append(count_words(r["response"]))
    assert len(groups) == 6
    for key, lengths in groups.items():
        assert min(lengths) < 70 and max(lengths) > 250, (key, min(lengths), max(lengths))


def test_files_are_disjoint_and_complete():
    pool = {_norm(r["instruction"]) for r in _jsonl("pool.jsonl")}
    scar = _jsonl("scar_train.jsonl")
    evals = _jsonl("open_eval.jsonl")
    assert len(scar) >= 150 and len(evals) >= 60
    scar_set = {_norm(r["instruction"]) for r in scar}
    eval_set = {_norm(r["instruction"]) for r in evals}
    assert len(scar_set) == len(scar) and len(eval_set) == len(evals)
    assert not pool & scar_set and not pool & eval_set and not scar_set & eval_set
    assert {r["domain"] for r in scar} == {"code", "open"}
    for row in scar:
        for style in STYLES:
            assert row[style].strip()
            for aspect in ("helpfulness", "correctness"):
                assert row["ratings"][style][aspect] in range(10)
    assert all(r["output"].strip() and r["instruction"].strip() for r in evals)


def _run(program: str) -> bool:
    try:
        done = subprocess.run([sys.executable, "-I", "-c", program], capture_output=True, timeout=20)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def test_code_labels_match_execution(pool_records):
    """Each code response's label is the truth: good ones pass their tests, flawed ones fail them."""
    code = [r for r in pool_records if r["meta"]["domain"] == "code"]
    programs = [extract_program(r["response"]) + "\n\n" + r["meta"]["tests"] + "\n" for r in code]
    with ThreadPoolExecutor(max_workers=4) as pool:
        passed = list(pool.map(_run, programs))
    wrong = [
        (r["id"], r["meta"]["quality"])
        for r, ok in zip(code, passed, strict=True)
        if ok != (r["meta"]["quality"] == "good")
    ]
    assert not wrong, f"labels contradicted by execution: {wrong}"
    assert sum(passed) >= 100 and passed.count(False) >= 30


def test_intrinsic_metrics_on_demo_slices(pool_records):
    good_direct = [r for r in pool_records if r["meta"]["style"] == "direct" and r["meta"]["quality"] == "good"]
    metrics = intrinsic_metrics(good_direct[:20])
    assert metrics["share_good"] == 1.0 and metrics["dominant_style"] == "direct"
    assert metrics["dominant_style_share"] == 1.0 and metrics["n"] == 20
    mixed = intrinsic_metrics(pool_records)
    expected = sum(r["meta"]["quality"] == "good" for r in pool_records) / len(pool_records)
    assert mixed["share_good"] == pytest.approx(expected)
    assert mixed["dominant_style_share"] < 0.5


def test_select_random_from_demo(tmp_path):
    out = tmp_path / "sel"
    result = run_cli("select", "--pool", "demo", "--selector", "random", "--budget", "0.1", "--out", str(out))
    assert result.returncode == 0, result.stderr
    lines = (out / "selection.jsonl").read_text().splitlines()
    assert len(lines) == 41  # floor(0.1 * 411)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["budget"]["resolved"] == 41 and len(set(meta["ids"])) == 41
    first = json.loads(lines[0])
    assert first["meta"]["style"] in STYLES
