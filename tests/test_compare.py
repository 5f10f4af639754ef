"""Paired comparisons against a baseline: verdicts on a synthetic grid with known differences, Holm by hand."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from selectbench.reports.compare import COMPARISON_COLUMNS, compare, holm, minimum_detectable, paired_bootstrap
from selectbench.reports.results import ItemValues, load_results, write_items, write_results
from selectbench.reports.summary import summarize

N_ITEMS, K = 70, 12
METRIC = "heldout-nll/nll_per_token"
# The true per-item effect of each selector on the NLL (lower is better); "same" is random's twin.
EFFECT = {"random": 0.0, "good": -0.03, "same": 0.0, "bad": 0.05}


def _grid(
    root: Path, *, with_items: bool = True, seeds: tuple[int, ...] = (0, 1, 2), kept: dict[str, int] | None = None
) -> Path:
    """A run folder: four selectors x seeds at one budget; per-item NLLs = item difficulty + effect + noise."""
    rng = np.random.default_rng(7)
    difficulty = rng.normal(3.0, 0.6, size=N_ITEMS)  # the spread that hides differences in unpaired intervals
    weights = rng.integers(20, 200, size=N_ITEMS).astype(float)
    rows = []
    for selector, effect in EFFECT.items():
        for seed in seeds:
            rid = f"{selector}-b{K}-s{seed}"
            seed_shift = rng.normal(0, 0.004)  # fine-tuning noise of this seed
            values = difficulty + effect + seed_shift + rng.normal(0, 0.02, size=N_ITEMS)
            value = float((values * weights).sum() / weights.sum())
            rows.append(
                {
                    "run_id": rid,
                    "selector": selector,
                    "budget": str(K),
                    "budget_k": K,
                    "seed": seed,
                    "kind": "selector",
                    "metric": METRIC,
                    "value": value,
                    "stderr": None,
                    "n": N_ITEMS,
                    "higher_is_better": False,
                    "recipe_hash": "r1",
                    "eval_config_hash": "e1",
                    "tokens_trained": 1000,
                    "select_seconds": 0.1,
                    "train_seconds": 1.0,
                    "eval_seconds": 1.0,
                    "selection_path": "",
                    "model": "tiny",
                    "n_selected": (kept or {}).get(selector, K),
                }
            )
            if with_items:
                lines = [
                    {"item": f"oe-{i:02d}", "metric": METRIC, "value": float(v), "weight": float(w)}
                    for i, (v, w) in enumerate(zip(values, weights, strict=True))
                ]
                write_items(root, rid, "heldout-nll", lines)
    write_results(rows, root / "results.csv")
    return root


def _compare(root: Path) -> dict[str, dict]:
    results = load_results([root])
    table = compare(results)
    assert list(table.columns[: len(COMPARISON_COLUMNS)]) == list(COMPARISON_COLUMNS)
    return {row["selector"]: row for row in table.to_dict("records")}


def test_a_known_difference_is_better_and_a_twin_of_random_is_not_significant(tmp_path: Path) -> None:
    rows = _compare(_grid(tmp_path))
    assert set(rows) == {"good", "same", "bad"}  # random is the baseline, not compared with itself
    good, same, bad = rows["good"], rows["same"], rows["bad"]
    assert good["verdict"] == "better"
    assert good["ci_low"] < EFFECT["good"] < good["ci_high"]
    assert good["ci_high"] < 0
    assert bad["verdict"] == "worse" and bad["ci_low"] > 0
    assert same["verdict"] == "n.s."
    assert same["ci_low"] < 0 < same["ci_high"]
    for row in rows.values():
        assert row["baseline"] == "random" and row["budget_k"] == K
        assert row["n_items"] == N_ITEMS and row["n_seeds"] == 3 and row["baseline_seeds"] == 3
        assert row["p_adjusted"] >= row["p_value"]
        assert row["method"].startswith("paired bootstrap")
    # The same differences judged unpaired (per-run intervals) overlap completely: pairing is what decides.
    summary = summarize(load_results([tmp_path]))
    good_ci = summary[summary["selector"] == "good"].iloc[0]
    random_ci = summary[summary["selector"] == "random"].iloc[0]
    assert good_ci["ci_high"] > random_ci["ci_low"]


def test_without_items_seeds_are_tested_and_one_seed_gives_no_verdict(tmp_path: Path) -> None:
    rows = _compare(_grid(tmp_path / "seeds", with_items=False))
    assert all(r["method"].startswith("permutation over seeds (paired") for r in rows.values())
    assert rows["same"]["verdict"] == "n.s."
    one = _compare(_grid(tmp_path / "one", with_items=False, seeds=(0,)))
    assert all(r["verdict"] == "" and "fewer than 2 seeds" in r["note"] for r in one.values())
    assert all(math.isnan(r["p_value"]) for r in one.values())


def test_identical_arms_have_p_one() -> None:
    values = ItemValues(np.array(["a", "b", "c"]), np.array([1.0, 2.0, 4.0]), np.ones(3))
    delta, low, high, p, se = paired_bootstrap([values], [values], rng=np.random.default_rng(0), n_boot=500)
    assert delta == low == high == se == 0.0 and p == 1.0


def test_holm_matches_a_hand_computation() -> None:
    # sorted: 0.01 x 4 = 0.04; 0.03 x 3 = 0.09; 0.04 x 2 = 0.08 -> 0.09 (monotone); 0.5 x 1 = 0.5
    adjusted = holm([0.01, 0.04, 0.03, math.nan, 0.5])
    assert adjusted[[0, 1, 2, 4]] == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert math.isnan(adjusted[3])
    assert holm([0.3, 0.6]) == pytest.approx([0.6, 0.6])


def test_minimum_detectable_difference_follows_the_normal_formula() -> None:
    d = np.array([0.1, -0.1] * 50)  # sd 0.1005, n 100
    expected = (1.959964 + 0.841621) * np.std(d, ddof=1) / 10
    assert minimum_detectable(d) == pytest.approx(expected, rel=1e-4)


def _share_rows(values: list[float], *, bounded: bool = True) -> list[dict]:
    rows = []
    for seed, value in enumerate(values):
        rows.append(
            {
                "run_id": f"random-b{K}-s{seed}",
                "selector": "random",
                "budget": str(K),
                "budget_k": K,
                "seed": seed,
                "kind": "selector",
                "metric": "intrinsic/share_good",
                "value": value,
                "n": 10,
                "higher_is_better": True,
                "recipe_hash": "r1",
                "eval_config_hash": "e1",
                "model": "tiny",
                **({"value_min": 0.0, "value_max": 1.0} if bounded else {}),
            }
        )
    return rows


def test_share_intervals_stay_inside_zero_and_one(tmp_path: Path) -> None:
    # Over seeds 0.9, 1.0, 1.0 a Student t interval reaches 1.12; a share's interval stops at 1.
    write_results(_share_rows([0.9, 1.0, 1.0]), tmp_path / "seeds" / "results.csv")
    row = summarize(load_results([tmp_path / "seeds"])).iloc[0]
    assert row["ci_method"] == "seeds" and row["ci_high"] == 1.0 and 0.0 <= row["ci_low"] < 0.97
    write_results(_share_rows([0.9, 1.0, 1.0], bounded=False), tmp_path / "open" / "results.csv")
    assert summarize(load_results([tmp_path / "open"])).iloc[0]["ci_high"] > 1.0  # without a range: no cut
    # One seed, no items: the Wilson interval of 10 of 10 (z = 1.96) is [0.7225, 1].
    write_results(_share_rows([1.0]), tmp_path / "one" / "results.csv")
    one = summarize(load_results([tmp_path / "one"])).iloc[0]
    assert one["ci_method"] == "wilson"
    assert (one["ci_low"], one["ci_high"]) == pytest.approx((0.7225, 1.0), abs=1e-4)


def test_a_value_outside_its_range_is_refused(tmp_path: Path) -> None:
    from selectbench.errors import SelectbenchError

    with pytest.raises(SelectbenchError, match=r"outside the metric's range \[0.0, 1.0\]"):
        write_results(_share_rows([1.2]), tmp_path / "results.csv")


def test_a_selector_that_cannot_fill_the_budget_is_marked_and_not_ranked(tmp_path: Path) -> None:
    from selectbench.reports.leaderboard import leaderboard_markdown, render_leaderboard_text

    root = _grid(tmp_path, kept={"good": 9})
    results = load_results([root])
    summary = summarize(results)
    table = compare(results)
    good = table[table["selector"] == "good"].iloc[0]
    assert good["k_selected"] == 9 and "kept 9 of 12 records" in good["note"]
    markdown = leaderboard_markdown(results, summary, comparisons=table)
    section = markdown.split(f"## {METRIC} (", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines() if line.startswith("|")]
    body = rows[2:]
    # good has the lowest NLL but trained on 9 records: listed last, unranked; the others ranked 1..3.
    assert [r[1] for r in body] == ["1", "2", "3", "—"]
    assert body[-1][2] == "good (9 of 12)"
    assert "good (9 of 12)" in render_leaderboard_text(results, summary, table)
