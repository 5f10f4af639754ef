"""The ``scar`` selector: filters, selection modes, score cache, the default ranker, and the conformance suite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, write_jsonl
from scar_helpers import make_tiny_bert, make_tiny_ranker, quadruple_rows, write_rows

from selectbench.data import load_pool, pool_from_records
from selectbench.errors import SelectbenchError
from selectbench.selectors import make_selector
from selectbench.selectors.scar import selector as scar_selector
from selectbench.selectors.scar.filters import (
    english_mask,
    english_share,
    exact_dedup_mask,
    jaccard,
    near_dedup_mask,
    word_bigrams,
)
from selectbench.testing import check_selector, tiny_pool


@pytest.fixture(scope="module")
def ranker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    encoder = make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))
    return make_tiny_ranker(tmp_path_factory.mktemp("ranker") / "ckpt", encoder)


def _pool(n: int = 12):  # type: ignore[no-untyped-def]
    rows = [
        {"instruction": f"Explain topic {i} simply.", "input": "", "output": "word " * (3 + i % 5) + f"answer {i}."}
        for i in range(n)
    ]
    return pool_from_records(rows)


# ---------------------------------------------------------------------------------------------- conformance


def test_scar_passes_the_conformance_suite(ranker_dir: Path) -> None:
    check_selector(make_selector("scar", ranker=str(ranker_dir)))


def test_scar_with_every_filter_passes_the_conformance_suite(ranker_dir: Path) -> None:
    rows = [{"instruction": f"Task {i}: say something", "output": f"reply number {i} here"} for i in range(20)]
    rows += [rows[3], rows[7]]  # exact duplicates
    rows.append({"instruction": "Task 3: say something", "output": "reply number 3 here!"})  # near duplicate
    rows.append({"instruction": "日本語で答えてください", "output": "はい、わかりました。"})  # not English
    selector = make_selector("scar", ranker=str(ranker_dir), english_filter=True, near_dedup=True)
    pool = pool_from_records(rows)
    check_selector(selector, pool)
    info = selector.select(pool, 5).info
    assert info["filtered"] == {"duplicate": 2, "not_english": 1, "near_duplicate": 1}
    assert info["n_kept"] == 20


# ---------------------------------------------------------------------------------------------- filters


def test_exact_dedup_keeps_the_first_of_stripped_duplicates() -> None:
    keep = exact_dedup_mask(["a", " a ", "a", "b"], ["x", "x\n", "y", "x"])
    assert keep.tolist() == [True, False, True, True]


def test_english_share_counts_ascii_letters_over_all_characters() -> None:
    assert english_share("abc d") == 0.8  # 4 letters of 5 characters (the space counts)
    assert english_share("x = 1;") == pytest.approx(1 / 6)
    keep = english_mask(
        ["Hello there friend", "Hello there friend", "Bonjour àèé"], ["Fine thanks a lot", "1 + 2 = 3", "Oui"]
    )
    assert keep.tolist() == [True, False, False]


def test_near_dedup_drops_pairs_at_or_above_the_jaccard_threshold() -> None:
    base = "the quick brown fox jumps over the lazy dog near the river bank today"
    words = base.split()
    close = " ".join([*words[:-1], "tomorrow"])  # one word changed at the end
    far = "an entirely different sentence about cooking pasta with garlic and oil"
    instructions = ["q", "q", "q", "q"]
    answers = [base, far, close, base.upper()]
    sims = [jaccard(word_bigrams(f"q {answers[0]}"), word_bigrams(f"q {a}")) for a in answers]
    assert sims[1] < 0.1 and sims[2] >= 0.5 and sims[3] == 1.0  # upper case is lower-cased first
    assert near_dedup_mask(instructions, answers).tolist() == [True, True, False, False]
    assert near_dedup_mask(instructions, answers, threshold=0.99).tolist() == [True, True, True, False]


def test_near_dedup_agrees_with_exhaustive_pairwise_jaccard() -> None:
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(40)]
    texts = []
    for _ in range(60):
        if texts and rng.random() < 0.5:  # a variant of an earlier text: a few words swapped
            words = texts[int(rng.integers(len(texts)))].split()
            for j in rng.choice(len(words), size=int(rng.integers(1, 6)), replace=False):
                words[j] = vocab[int(rng.integers(len(vocab)))]
            texts.append(" ".join(words))
        else:
            texts.append(" ".join(rng.choice(vocab, size=20)))
    keep = near_dedup_mask(["i"] * len(texts), texts)
    # Exhaustive reference: keep a text unless it is >= 0.5 similar to an earlier kept one.
    shingles = [word_bigrams(f"i {t}") for t in texts]
    expected: list[int] = []
    for i, s in enumerate(shingles):
        if not any(jaccard(s, shingles[j]) >= 0.5 for j in expected):
            expected.append(i)
    assert np.flatnonzero(keep).tolist() == expected
    assert 10 < len(expected) < 55  # the case is not trivial either way


# ---------------------------------------------------------------------------------------------- selection modes


def test_topk_is_the_stable_top_of_the_scores_and_smaller_k_is_a_prefix(ranker_dir: Path) -> None:
    pool = _pool(12)
    selector = make_selector("scar", ranker=str(ranker_dir))
    scores = selector.score(pool)
    big, small = selector.select(pool, 8), selector.select(pool, 3)
    assert big.indices == np.argsort(-scores, kind="stable")[:8].tolist()
    assert big.indices[:3] == small.indices
    assert big.scores == sorted(big.scores, reverse=True)
    assert big.info["mode"] == "topk"


def test_ratio_floors_over_the_records_that_pass_the_filters(ranker_dir: Path) -> None:
    rows = [{"instruction": f"Explain {i}", "output": f"answer {i}"} for i in range(10)] * 2  # 10 duplicates
    pool = pool_from_records(rows, on_invalid="error")
    kept = make_selector("scar", ranker=str(ranker_dir)).select(pool, 0.25)
    assert len(kept.indices) == 2 and kept.info["mode"] == "ratio" and kept.info["n_kept"] == 10  # floor(2.5)
    assert all(i < 10 for i in kept.indices)  # duplicates are never selected
    full = make_selector("scar", ranker=str(ranker_dir), budget_base="full").select(pool, 0.25)
    assert len(full.indices) == 5  # floor(0.25 * 20), drawn from the 10 kept


def test_threshold_keeps_every_score_at_or_above_it(ranker_dir: Path) -> None:
    pool = _pool(12)
    scores = make_selector("scar", ranker=str(ranker_dir)).score(pool)
    cut = float(np.sort(scores)[-5])  # exactly 5 scores are >= the 5th highest (inclusive)
    selection = make_selector("scar", ranker=str(ranker_dir), threshold=cut).select(pool, 1.0)
    assert sorted(selection.indices) == sorted(np.flatnonzero(scores >= cut).tolist())
    assert selection.info["mode"] == "threshold" and len(selection.indices) == 5
    capped = make_selector("scar", ranker=str(ranker_dir), threshold=cut).select(pool, 2)
    assert capped.indices == selection.indices[:2]  # the budget caps the count
    with pytest.raises(SelectbenchError, match="no record scores >= threshold"):
        make_selector("scar", ranker=str(ranker_dir), threshold=float(scores.max()) + 1).select(pool, 1.0)


def test_bad_parameters_are_errors() -> None:
    with pytest.raises(SelectbenchError, match="cannot be combined with ranker"):
        make_selector("scar", ranker="x", encoder="minilm-l6")
    with pytest.raises(SelectbenchError, match="budget_base must be kept or full"):
        make_selector("scar", budget_base="some")
    with pytest.raises(SelectbenchError, match="near_dedup_threshold must be in"):
        make_selector("scar", near_dedup_threshold=1.5)
    with pytest.raises(SelectbenchError, match="batch_size must be a positive integer"):
        make_selector("scar", batch_size=0)


# ---------------------------------------------------------------------------------------------- score cache


def test_scores_are_cached_in_chunks_and_a_lost_chunk_is_recomputed(
    ranker_dir: Path, monkeypatch: pytest.MonkeyPatch, isolated_cache: Path
) -> None:
    from selectbench.selectors.scar import model as scar_model

    monkeypatch.setattr(scar_selector, "CHUNK", 5)
    pool = _pool(12)
    scored: list[int] = []
    real = scar_model.score_tokenized

    def counting(model, tokenizer, ins, ans, **kw):  # type: ignore[no-untyped-def]
        scored.append(len(ans))
        return real(model, tokenizer, ins, ans, **kw)

    monkeypatch.setattr(scar_model, "score_tokenized", counting)
    selector = make_selector("scar", ranker=str(ranker_dir))
    first = selector.score(pool)
    assert scored == [5, 5, 2]
    chunks = sorted((isolated_cache / "scores" / "scar").rglob("chunk-*.json"))
    assert len(chunks) == 3
    chunks[1].unlink()  # as if the run had been killed while scoring the second chunk
    again = selector.score(pool)
    assert scored == [5, 5, 2, 5]  # only the missing chunk was scored
    assert again.tolist() == pytest.approx(first.tolist(), abs=1e-6)
    selector.score(pool)
    assert scored == [5, 5, 2, 5]  # fully cached: the ranker is not even loaded


def test_cli_score_and_select_with_a_ranker_folder(ranker_dir: Path, tmp_path: Path) -> None:
    rows = [{"instruction": f"Explain {i}", "output": "words " * (i + 1)} for i in range(8)]
    rows.append(rows[2])
    pool = write_jsonl(tmp_path / "pool.jsonl", rows)
    scores = tmp_path / "scores.jsonl"
    result = run_cli("score", "--pool", str(pool), "--selector", "scar", "--param", f"ranker={ranker_dir}",
                     "--out", str(scores))  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in scores.read_text().splitlines()]
    assert len(lines) == 9 and all(isinstance(line["score"], float) for line in lines)
    assert [line["filtered"] for line in lines] == [None] * 8 + ["duplicate"]
    out = tmp_path / "sel"
    result = run_cli("select", "--pool", str(pool), "--selector", "scar", "--param", f"ranker={ranker_dir}",
                     "--budget", "3", "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    selected = [json.loads(line) for line in (out / "selection.jsonl").read_text().splitlines()]
    best = sorted(lines[:8], key=lambda line: -line["score"])[:3]
    assert [s["id"] for s in selected] == [b["id"] for b in best]
    assert (out / "DONE").exists()


# ---------------------------------------------------------------------------------------------- default ranker


@pytest.fixture
def tiny_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """Make the default ranker cheap: tiny quadruples, a tiny encoder, one epoch."""
    monkeypatch.setattr(scar_selector, "BUNDLED_DATA", write_rows(tmp_path / "bundled.jsonl", quadruple_rows(12)))
    monkeypatch.setattr(scar_selector, "DEFAULT_RANKER_EPOCHS", 1)
    return str(make_tiny_bert(tmp_path / "encoder"))


def test_the_default_ranker_is_trained_once_and_cached(
    tiny_default: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from selectbench.selectors.scar import train

    calls: list[Path] = []
    real = train.train_ranker

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(Path(args[1]))
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "train_ranker", counting)
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(scar_selector.default_ranker(tiny_default))) for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1  # the second caller waited on the lock, then found the finished ranker
    assert results[0] == results[1] and (results[0] / "DONE").exists()
    assert not calls[0].exists()  # trained into a temporary folder, renamed into place
    err = capsys.readouterr().err
    assert err.count("training the default SCAR ranker") == 1 and "scar train" in err  # message + progress bar
    meta = json.loads((results[0] / "meta.json").read_text())
    assert meta["config"]["epochs"] == 1 and meta["config"]["encoder"] == tiny_default
    # The selector uses it without retraining.
    selection = make_selector("scar", encoder=tiny_default).select(tiny_pool(), 3)
    assert len(selection.indices) == 3 and len(calls) == 1


def test_a_killed_default_training_leaves_nothing_that_looks_finished(
    tiny_default: str, monkeypatch: pytest.MonkeyPatch, isolated_cache: Path
) -> None:
    from selectbench.selectors.scar import train

    def dying(data, out, config, progress=True):  # type: ignore[no-untyped-def]
        Path(out).mkdir(parents=True)
        (Path(out) / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "train_ranker", dying)
    with pytest.raises(KeyboardInterrupt):
        scar_selector.default_ranker(tiny_default)
    leftovers = [p.name for p in (isolated_cache / "scar").iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []


# ---------------------------------------------------------------------------------------------- the real default


@pytest.fixture(scope="module")
def default_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`selectbench select --pool demo --selector scar --budget 0.1` from an empty cache, offline: it trains the
    default ranker (minilm-l6 on the bundled quadruples) once; the tests below reuse that cache."""
    cache = tmp_path_factory.mktemp("scar-default-cache")
    out = tmp_path_factory.mktemp("scar-default") / "sel"
    env = {**os.environ, "SELECTBENCH_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    # Not run_cli: training takes about 2 minutes on 2 idle cores, many times that on shared ones.
    result = subprocess.run(
        [sys.executable, "-m", "selectbench", "select", "--pool", "demo", "--selector", "scar", "--budget", "0.1",
         "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=3600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "training the default SCAR ranker" in result.stderr
    (ranker,) = [p for p in (cache / "scar").iterdir() if p.is_dir()]
    return {"cache": cache, "out": out, "ranker": ranker}


@pytest.mark.slow
def test_select_demo_with_the_default_ranker_from_a_fresh_cache(default_run: dict[str, Path]) -> None:
    lines = (default_run["out"] / "selection.jsonl").read_text().splitlines()
    assert len(lines) == 41  # floor(0.1 * 411): the demo pool has no duplicates
    meta = json.loads((default_run["out"] / "meta.json").read_text())
    assert meta["selector"] == "scar" and meta["params"]["ranker"] is None


@pytest.mark.slow
def test_default_ranker_ranks_held_out_llm_answers_above_human_ones(default_run: dict[str, Path]) -> None:
    meta = json.loads((default_run["ranker"] / "meta.json").read_text())
    assert meta["config"]["encoder"] == "minilm-l6"
    # Held-out pairwise accuracy (direct > referenced > human) over 16 validation and 16 test quadruples.
    assert meta["val_accuracy"] > 0.6 and meta["test_accuracy"] > 0.6, meta


@pytest.mark.slow
def test_default_ranker_scores_demo_llm_style_good_answers_above_human_ones(
    default_run: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SELECTBENCH_CACHE", str(default_run["cache"]))
    pool = load_pool("demo")
    scores = make_selector("scar").score(pool)  # cached by the CLI run above
    meta = [pool[i]["meta"] for i in range(len(pool))]
    good = {
        style: scores[[i for i, m in enumerate(meta) if m["style"] == style and m["quality"] == "good"]].mean()
        for style in ("human", "referenced", "direct")
    }
    assert good["direct"] > good["human"] and good["referenced"] > good["human"], good
