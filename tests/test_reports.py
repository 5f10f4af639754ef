"""Reports from results.csv: contract, leaderboard, intervals, overlaps, merging. Run: pytest tests/test_reports.py."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli
from reports_helpers import EVAL, RECIPE, make_run, run_id

from selectbench.errors import SelectbenchError
from selectbench.reports import load_results, read_results, render_leaderboard_text, summarize, write_reports
from selectbench.reports.results import ItemValues, items_path
from selectbench.reports.selections import jaccard, overlap_matrix, run_selections
from selectbench.reports.summary import bootstrap_ci


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The realistic fixture run (written once; tests that change it copy it first)."""
    return make_run(tmp_path_factory.mktemp("reports") / "run")


@pytest.fixture(scope="module")
def report(run: Path) -> dict[str, Path]:
    """The report of the fixture run, written once."""
    return write_reports([run], run / "report")


@pytest.fixture(scope="module")
def summary(run: Path) -> pd.DataFrame:
    """summarize() of the fixture run."""
    return summarize(load_results([run]))


def _row(summary: pd.DataFrame, label: str, k: int | None, metric: str) -> pd.Series:
    rows = summary[(summary["label"] == label) & (summary["metric"] == metric)]
    rows = rows[rows["budget_k"].isna()] if k is None else rows[rows["budget_k"] == k]
    assert len(rows) == 1, f"expected one row for {label} k={k} {metric}"
    return rows.iloc[0]


def _table(markdown: str, metric: str) -> list[list[str]]:
    """The body rows of one metric's table in leaderboard.md, as cells."""
    section = markdown.split(f"## {metric} (", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")][2:]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


# --- leaderboard -------------------------------------------------------------------------------------------------


def test_leaderboard_ranks_selectors_at_each_budget_and_shows_references(report: dict[str, Path]) -> None:
    markdown = report["leaderboard.md"].read_text(encoding="utf-8")
    rows = _table(markdown, "humaneval/pass@1")
    # budget, rank, selector, mean, CI, CI from, seeds, items, cost
    assert [(r[0], r[1], r[2], r[3], r[6]) for r in rows] == [
        ("6 (0.1)", "1", "ifd", "0.300", "1"),
        ("", "2", "longest", "0.250", "1"),
        ("", "3", "random", "0.200", "3"),
        ("15 (0.25)", "1", "longest", "0.400", "1"),
        ("", "2", "ifd", "0.350", "1"),
        ("", "3", "random", "0.300", "3"),
        ("references", "", "full pool (k=60)", "0.450", "1"),
        ("", "", "base model", "0.100", "1"),
    ]
    # Lower is better for NLL: the order flips to ascending.
    nll = _table(markdown, "heldout-nll/nll")
    assert [(r[2], r[3]) for r in nll[:3]] == [("ifd", "1.780"), ("random", "1.810"), ("longest", "1.850")]
    assert "## heldout-nll/nll (lower is better)" in markdown
    # Cost is selection + training seconds, averaged over seeds: random at k=6 took 0.01 s to select and
    # 29.64, 28.36 and 28.36 s to train -> 28.797 s.
    assert rows[2][8] == "28.8"
    assert rows[0][4:6] == ["0.100 – 0.500", "items"]


def test_leaderboard_has_provenance_interval_methods_and_plots(report: dict[str, Path]) -> None:
    markdown = report["leaderboard.md"].read_text(encoding="utf-8")
    assert f"- **fine-tuning recipe hash**: {RECIPE}" in markdown
    assert f"- **evaluation config hash**: {EVAL}" in markdown
    assert "- `items x seeds`: bootstrap over eval items and seeds" in markdown
    assert "- `seeds`: Student t over seeds" in markdown
    # Intrinsic columns come after the quality metrics.
    assert markdown.index("## alpacaeval/win_rate") < markdown.index("## intrinsic/share_good")
    assert markdown.index("## intrinsic/share_good") < markdown.index("## intrinsic/style_consistency")
    for name in report:
        if name.startswith("plots/"):
            assert f"]({name})" in markdown


def test_tied_means_share_a_rank(report: dict[str, Path]) -> None:
    # At k=15 every selector has style consistency 7/15 (its records span the same style blocks).
    rows = _table(report["leaderboard.md"].read_text(encoding="utf-8"), "intrinsic/style_consistency")
    at_15 = rows[3:6]
    assert [(r[1], r[3]) for r in at_15] == [("1", "0.467"), ("1", "0.467"), ("1", "0.467")]


def test_cli_prints_the_terminal_leaderboard_and_replaces_old_plots(
    run: Path, report: dict[str, Path], tmp_path: Path
) -> None:
    text = render_leaderboard_text(run)
    lines = text.splitlines()
    start = lines.index("humaneval/pass@1  (higher is better; mean [95% CI])")
    assert lines[start + 1 : start + 5] == [
        "  budget 6 (0.1)",
        "     1  ifd               0.300  [0.100 – 0.500]  Δ ≈ +0.100 (-0.100 – +0.300)",
        "     2  longest           0.250  [0.100 – 0.450]  Δ ≈ +0.050 (-0.167 – +0.267)",
        "     3  random            0.200  [0.067 – 0.350]  3 seeds",
    ]
    # The terminal ends with what the paired comparisons conclude.
    assert "paired comparisons with random (Holm-adjusted, alpha 0.05):" in lines
    out = tmp_path / "cli-report"
    (out / "plots").mkdir(parents=True)
    (out / "plots" / "metric_vs_budget-gone-metric.png").write_bytes(b"a plot of an earlier report")
    done = run_cli("report", str(run), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stdout == text
    assert "cli-report/index.html (15 plots)" in done.stderr
    # The earlier report's plot is gone; the folder holds exactly this report's plots.
    assert sorted(p.name for p in (out / "plots").iterdir()) == sorted(
        n.removeprefix("plots/") for n in report if n.startswith("plots/")
    )


# --- intervals --------------------------------------------------------------------------------------------------


def test_t_interval_over_seeds_matches_a_hand_computation(summary: pd.DataFrame) -> None:
    # random's win rates at k=6 are 0.10, 0.14, 0.12 (no per-item file): mean 0.12, sd 0.02, t(0.975, 2) = 4.302653.
    row = _row(summary, "random", 6, "alpacaeval/win_rate")
    half = 4.302653 * 0.02 / math.sqrt(3)
    assert row["ci_method"] == "seeds"
    assert row["mean"] == pytest.approx(0.12)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((0.12 - half, 0.12 + half), abs=1e-6)
    assert row["seed_sd"] == pytest.approx(0.02)


def test_stderr_interval_for_one_seed_and_none_without_stderr(summary: pd.DataFrame) -> None:
    longest = _row(summary, "longest", 6, "alpacaeval/win_rate")
    assert longest["ci_method"] == "stderr"
    assert (longest["ci_low"], longest["ci_high"]) == pytest.approx((0.16 - 1.959964 * 0.03, 0.16 + 1.959964 * 0.03))
    ifd = _row(summary, "ifd", 6, "alpacaeval/win_rate")
    assert ifd["ci_method"] == "none" and math.isnan(ifd["ci_low"])


def test_item_bootstrap_is_used_when_items_exist(summary: pd.DataFrame) -> None:
    assert _row(summary, "random", 6, "humaneval/pass@1")["ci_method"] == "items x seeds"
    ifd = _row(summary, "ifd", 6, "humaneval/pass@1")
    assert ifd["ci_method"] == "items" and ifd["n_items"] == 20
    assert ifd["ci_low"] < 0.3 < ifd["ci_high"]
    # 6 of 20 passed: the interval is a percentile of means of 20 draws, so its ends are multiples of 1/20.
    assert ifd["ci_low"] * 20 == pytest.approx(round(ifd["ci_low"] * 20))
    base = _row(summary, "base model", None, "heldout-nll/nll")
    assert base["ci_method"] == "items" and base["ci_low"] < 2.10 < base["ci_high"]


def test_bootstrap_over_items_matches_the_normal_approximation() -> None:
    values = np.zeros(400)
    values[:120] = 1.0  # p = 0.3 over 400 items: half-width 1.96 * sqrt(0.21 / 400) = 0.0449
    items = ItemValues(np.arange(400).astype(str).astype(object), values, np.ones(400))
    low, high = bootstrap_ci([items], n_boot=4000, rng=np.random.default_rng(0))
    assert low == pytest.approx(0.3 - 0.0449, abs=0.006)
    assert high == pytest.approx(0.3 + 0.0449, abs=0.006)
    assert bootstrap_ci([items], n_boot=4000, rng=np.random.default_rng(0)) == (low, high)


def test_bootstrap_over_seeds_with_constant_items_spans_the_seeds() -> None:
    # No item noise: only the seed resampling varies. A mean of 3 draws equals the smallest seed with
    # probability 1/27 > 2.5%, so the 95% interval is exactly [min, max].
    ids = np.array(["a", "b", "c", "d"], dtype=object)
    seeds = [ItemValues(ids, np.full(4, v), np.ones(4)) for v in (0.1, 0.2, 0.3)]
    low, high = bootstrap_ci(seeds, n_boot=4000, rng=np.random.default_rng(1))
    assert (low, high) == pytest.approx((0.1, 0.3))
    same = bootstrap_ci([ItemValues(ids, np.full(4, 0.2), np.ones(4))] * 3, rng=np.random.default_rng(1))
    assert same == pytest.approx((0.2, 0.2))


def test_bootstrap_uses_item_weights() -> None:
    # Half the items at 1.0 with weight 3, half at 3.0 with weight 1: weighted mean 1.5, plain mean 2.0.
    values = np.array([1.0, 3.0] * 100)
    weights = np.array([3.0, 1.0] * 100)
    items = ItemValues(np.arange(200).astype(str).astype(object), values, weights)
    assert items.mean == pytest.approx(1.5)
    low, high = bootstrap_ci([items], rng=np.random.default_rng(0))
    assert low < 1.5 < high < 2.0


# --- selections ---------------------------------------------------------------------------------------------------


def test_jaccard_overlap_matches_a_hand_computation(run: Path) -> None:
    matrix = overlap_matrix(run_selections(load_results([run]), 6))
    assert list(matrix.index) == ["ifd", "longest", "random"]
    # ifd p03-p08 vs longest p00-p05: 3 shared of 9.
    assert matrix.loc["ifd", "longest"] == pytest.approx(1 / 3)
    assert matrix.loc["longest", "ifd"] == pytest.approx(1 / 3)
    # random seeds p10-15 / p12-17 / {p00, p01, p20-23}: vs longest 0, 0 and 2/10 -> 1/15.
    assert matrix.loc["random", "longest"] == pytest.approx(1 / 15)
    assert matrix.loc["random", "ifd"] == pytest.approx(0.0)
    # Between random's own seeds: 4/8, 0 and 0 -> 1/6; a one-seed selector's diagonal is 1.
    assert matrix.loc["random", "random"] == pytest.approx(1 / 6)
    assert matrix.loc["longest", "longest"] == 1.0
    assert jaccard(("a", "b"), ("b", "c")) == pytest.approx(1 / 3)


def test_selection_lengths_and_scores_come_from_the_selection_files(run: Path) -> None:
    selections = run_selections(load_results([run]), 6)
    longest = selections["longest"][0]
    assert longest.ids == ("p00", "p01", "p02", "p03", "p04", "p05")
    assert list(longest.lengths) == [120, 118, 116, 114, 112, 110]
    assert list(longest.scores) == [120, 118, 116, 114, 112, 110]
    assert np.isnan(selections["random"][0].scores).all()
    assert len(selections["random"]) == 3


def test_intrinsic_columns_are_reported(summary: pd.DataFrame) -> None:
    # longest at k=6 keeps p00-p05: p03 is flawed (every fourth), all six are in the first style block.
    assert _row(summary, "longest", 6, "intrinsic/share_good")["mean"] == pytest.approx(5 / 6)
    assert _row(summary, "longest", 6, "intrinsic/style_consistency")["mean"] == pytest.approx(1.0)
    # random seeds: 4/6, 5/6, 5/6 good.
    assert _row(summary, "random", 6, "intrinsic/share_good")["mean"] == pytest.approx(7 / 9)


# --- report files ------------------------------------------------------------------------------------------------


def test_report_folder_has_every_output(report: dict[str, Path], run: Path) -> None:
    names = set(report)
    assert {"leaderboard.md", "index.html", "summary.csv", "comparisons.csv", "meta.json"} <= names
    plots = {name for name in names if name.startswith("plots/")}
    assert plots == {
        "plots/metric_vs_budget-humaneval-pass_at_1.png",
        "plots/metric_vs_budget-heldout-nll-nll.png",
        "plots/metric_vs_budget-alpacaeval-win_rate.png",
        "plots/metric_vs_budget-intrinsic-share_good.png",
        "plots/metric_vs_budget-intrinsic-style_consistency.png",
        "plots/overlap-k6.png",
        "plots/overlap-k15.png",
        "plots/length_distributions.png",
        "plots/score_distributions.png",
        "plots/cost_vs_quality.png",
        "plots/differences-humaneval-pass_at_1.png",
        "plots/differences-heldout-nll-nll.png",
        "plots/differences-alpacaeval-win_rate.png",
        "plots/differences-intrinsic-share_good.png",
        "plots/differences-intrinsic-style_consistency.png",
    }
    for name in plots:
        assert report[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "report" / "DONE").exists()
    meta = json.loads(report["meta.json"].read_text())
    assert meta["stage"] == "report" and meta["rows"] == 53 and len(meta["runs"][0]["results_sha256"]) == 64
    table = pd.read_csv(report["summary.csv"])
    assert len(table) == 35


def test_report_writes_paired_comparisons_with_the_contract_columns(report: dict[str, Path]) -> None:
    from selectbench.reports import COMPARISON_COLUMNS

    table = pd.read_csv(report["comparisons.csv"], keep_default_na=False)
    assert tuple(table.columns) == COMPARISON_COLUMNS
    # Against random: longest and ifd at 2 budgets on 5 metrics, minus alpacaeval at k=15 (no random run there).
    vs_random = table[table["baseline"] == "random"]
    assert len(vs_random) == 2 * 2 * 5 - 2
    # Against the references: every selector (random included) at every budget it ran.
    assert set(table["baseline"]) == {"random", "full", "base"}
    assert set(table["verdict"]) <= {"better", "worse", "n.s.", ""}
    # ifd vs random on held-out NLL at k=6: 1.78 vs the mean of 1.81, 1.79, 1.83.
    row = vs_random[(vs_random["metric"] == "heldout-nll/nll") & (vs_random["selector"] == "ifd")]
    row = row[row["budget_k"] == 6].iloc[0]
    assert float(row["delta"]) == pytest.approx(1.78 - (1.81 + 1.79 + 1.83) / 3)
    assert row["n_items"] == 12 and row["n_seeds"] == 1 and row["baseline_seeds"] == 3
    # Intrinsic shares have no eval items, ifd has one seed: no verdict, and the leaderboard says why.
    intrinsic = vs_random[vs_random["metric"] == "intrinsic/share_good"]
    assert (intrinsic["verdict"] == "").all()
    markdown = report["leaderboard.md"].read_text(encoding="utf-8")
    assert "## Paired comparisons" in markdown and "## Overall (against random)" in markdown
    assert "fewer than 2 seeds in an arm" in markdown
    assert "| Δ vs random |" in markdown


def test_without_item_files_intervals_fall_back_to_seeds_and_stderr(tmp_path: Path) -> None:
    summary = summarize(load_results([make_run(tmp_path / "run", with_items=False)]))
    assert _row(summary, "random", 6, "humaneval/pass@1")["ci_method"] == "seeds"
    ifd = _row(summary, "ifd", 6, "humaneval/pass@1")
    assert ifd["ci_method"] == "stderr"
    half = 1.959964 * math.sqrt(0.3 * 0.7 / 20)
    assert (ifd["ci_low"], ifd["ci_high"]) == pytest.approx((0.3 - half, 0.3 + half), abs=1e-6)


# --- merging and refusing --------------------------------------------------------------------------------------------


def test_report_merges_compatible_runs_and_counts_shared_references_once(tmp_path: Path) -> None:
    first = make_run(tmp_path / "a", selectors=("random", "longest"))
    second = make_run(tmp_path / "b", selectors=("ifd",))
    done = run_cli("report", str(first), str(second), "--out", str(tmp_path / "merged"))
    assert done.returncode == 0, done.stderr
    markdown = (tmp_path / "merged" / "leaderboard.md").read_text(encoding="utf-8")
    rows = _table(markdown, "humaneval/pass@1")
    assert [r[2] for r in rows[:3]] == ["ifd", "longest", "random"]
    summary = pd.read_csv(tmp_path / "merged" / "summary.csv")
    base = summary[(summary["label"] == "base model") & (summary["metric"] == "humaneval/pass@1")]
    assert base["n_seeds"].tolist() == [1]
    assert f"base model seed 0 is in several runs; kept {first}, dropped {second}" in markdown
    assert "note: base model seed 0 is in several runs" in done.stdout


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"recipe_hash": "r-other999"},
            ["different fine-tuning recipes", "recipe_hash=r-3f2a9c41", "recipe_hash=r-other999"],
        ),
        ({"eval_config_hash": "e-other999"}, ["different evaluation configs", "eval_config_hash=e-other999"]),
    ],
)
def test_report_refuses_runs_with_a_different_recipe_or_eval_config(
    tmp_path: Path, change: dict[str, str], expected: list[str]
) -> None:
    first = make_run(tmp_path / "first", selectors=("random",))
    second = make_run(tmp_path / "second", selectors=("longest",), **change)  # type: ignore[arg-type]
    done = run_cli("report", str(first), str(second), "--out", str(tmp_path / "merged"))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    for text in [*expected, str(first), str(second)]:
        assert text in done.stderr
    assert not (tmp_path / "merged" / "index.html").exists()


def test_several_runs_need_an_out_folder(run: Path) -> None:
    done = run_cli("report", str(run), str(run))
    assert done.returncode == 2
    assert "--out" in done.stderr


def test_one_selector_label_with_two_param_sets_is_refused(tmp_path: Path) -> None:
    first = make_run(tmp_path / "a", selectors=("ifd",))
    second = make_run(tmp_path / "b", selectors=("ifd",))
    for folder, params in ((first, '{"variant": "ppl"}'), (second, '{"variant": "loss"}')):
        frame = pd.read_csv(folder / "results.csv", dtype=str, keep_default_na=False)
        frame["params"] = [params if kind == "selector" else "" for kind in frame["kind"]]
        frame.to_csv(folder / "results.csv", index=False)
    with pytest.raises(SelectbenchError, match="selector 'ifd' has different params"):
        load_results([first, second])


# --- the results.csv contract --------------------------------------------------------------------------------------


def _edit_csv(run: Path, tmp_path: Path, edit) -> Path:  # type: ignore[no-untyped-def]
    copy = tmp_path / "copy"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("report"))
    frame = pd.read_csv(copy / "results.csv", dtype=str, keep_default_na=False)
    frame = edit(frame)
    frame.to_csv(copy / "results.csv", index=False)
    return copy


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda f: f.drop(columns=["recipe_hash"]), "missing required columns ['recipe_hash']"),
        (lambda f: f.assign(lr="0.1"), "unknown columns ['lr']; results.csv columns are: run_id, selector"),
        (
            lambda f: f.assign(value=["oops", *list(f["value"][1:])]),
            "line 2: column 'value' must be a finite number, got 'oops'",
        ),
        (lambda f: f.assign(kind=["model", *list(f["kind"][1:])]), "line 2: kind must be one of selector, full, base"),
        (lambda f: f.assign(metric=["pass@1", *list(f["metric"][1:])]), "metric must look like '<benchmark>/<name>'"),
        (lambda f: f.assign(budget_k=["", *list(f["budget_k"][1:])]), "line 2: a selector run needs budget"),
        (
            lambda f: f.assign(higher_is_better=["false", *list(f["higher_is_better"][1:])]),
            "higher_is_better is true on some rows",
        ),
        (lambda f: pd.concat([f, f.iloc[:1]]), "has metric humaneval/pass@1 twice"),
        (lambda f: f.assign(run_id=["a/b", *list(f["run_id"][1:])]), "must be one path component"),
        (lambda f: f.assign(recipe_hash=["", *list(f["recipe_hash"][1:])]), "line 2: recipe_hash is empty"),
    ],
)
def test_results_that_break_the_contract_are_refused(run: Path, tmp_path: Path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    copy = _edit_csv(run, tmp_path, edit)
    with pytest.raises(SelectbenchError) as caught:
        read_results(copy / "results.csv")
    assert message in str(caught.value)
    assert str(copy / "results.csv") in str(caught.value)


def test_all_problems_are_reported_at_once(run: Path, tmp_path: Path) -> None:
    def edit(frame: pd.DataFrame) -> pd.DataFrame:
        frame.loc[0, "value"] = "nan"
        frame.loc[3, "n"] = "-4"
        frame.loc[5, "seed"] = "1.5"
        return frame

    with pytest.raises(SelectbenchError) as caught:
        read_results(_edit_csv(run, tmp_path, edit) / "results.csv")
    message = str(caught.value)
    assert "line 2: column 'value'" in message
    assert "line 5: column 'n' must be >= 0" in message
    assert "line 7: column 'seed' must be an integer, got '1.5'" in message


def test_item_values_must_average_to_the_row_value(run: Path, tmp_path: Path) -> None:
    copy = _edit_csv(run, tmp_path, lambda f: f)
    path = items_path(copy, run_id("ifd", 6, 0), "humaneval")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    flip = next(line for line in lines if line["value"] == 0.0)
    flip["value"] = 1.0  # now 7 of 20 pass, but results.csv says 0.30
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(SelectbenchError, match=r"the mean of 20 item values for humaneval/pass@1 is 0\.35"):
        load_results([copy])


def test_every_run_must_answer_the_same_items(run: Path, tmp_path: Path) -> None:
    copy = _edit_csv(run, tmp_path, lambda f: f)
    path = items_path(copy, run_id("longest", 6, 0), "heldout-nll")
    lines = path.read_text().splitlines()
    first = json.loads(lines[0])
    first["item"] = "oe-renamed"
    path.write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    with pytest.raises(SelectbenchError, match="items differ from those in"):
        load_results([copy])


def test_a_missing_selection_file_is_named(run: Path, tmp_path: Path) -> None:
    copy = _edit_csv(run, tmp_path, lambda f: f)
    (copy / "select" / "ifd" / "k6" / "s0" / "selection.jsonl").unlink()
    with pytest.raises(SelectbenchError, match=r"select/ifd/k6/s0/selection\.jsonl: selection file not found"):
        run_selections(load_results([copy]), 6)


def test_a_missing_results_file_says_what_to_do(tmp_path: Path) -> None:
    done = run_cli("report", str(tmp_path))
    assert done.returncode == 2
    assert "results.csv: no such file" in done.stderr


def test_writers_refuse_rows_outside_the_contract(tmp_path: Path) -> None:
    from selectbench.reports import write_items, write_results

    row = {"run_id": "base", "selector": "base", "seed": 0, "kind": "base", "metric": "humaneval/pass@1", "value": 0.1}
    row |= {"n": 164, "higher_is_better": True, "eval_config_hash": "e1", "model": "m"}
    with pytest.raises(SelectbenchError, match=r"unknown columns \['pass_at_1'\]"):
        write_results([{**row, "pass_at_1": 0.1}], tmp_path / "results.csv")
    with pytest.raises(SelectbenchError, match="line 2: column 'model' is empty"):
        write_results([{**row, "model": None}], tmp_path / "results.csv")
    assert not (tmp_path / "results.csv").exists()
    # Columns that may be empty can be left out of a row; they are still written, empty.
    written = read_results(write_results([row], tmp_path / "results.csv"))
    assert written["stderr"].isna().all() and list(written["higher_is_better"]) == [True]
    with pytest.raises(SelectbenchError, match=re.escape("metric 'heldout-nll/nll' is not a humaneval/... metric")):
        write_items(tmp_path, "base", "humaneval", [{"item": "a", "metric": "heldout-nll/nll", "value": 1.0}])
    with pytest.raises(SelectbenchError, match="line 1: keys"):
        write_items(tmp_path, "base", "humaneval", [{"item": "a", "metric": "humaneval/pass@1", "passed": 1}])
