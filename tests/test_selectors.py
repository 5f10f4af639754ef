"""Selector API: budgets, the registry, random and longest exactly as ALGORITHMS.md, and conformance."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import write_jsonl

from selectbench.data import load_pool, pool_from_records
from selectbench.errors import SelectbenchError
from selectbench.selectors import (
    BudgetError,
    ScoreSelector,
    available,
    make_selector,
    parse_budget,
    register,
    resolve_budget,
    top_k,
)
from selectbench.selectors.registry import REGISTRY
from selectbench.testing import CHECKS, check_selector, checks_for, tiny_pool


@pytest.mark.parametrize(
    ("budget", "n", "k"),
    [(5, 10, 5), (10, 10, 10), (0.5, 10, 5), (0.25, 10, 2), (1.0, 7, 7), (0.01, 10, 1), (0.999, 10, 9)],
)
def test_budgets_resolve_to_counts(budget: float, n: int, k: int) -> None:
    assert resolve_budget(budget, n) == k


@pytest.mark.parametrize("budget", [0, -3, 11, 0.0, 1.01, -0.5, float("nan"), True, "5", None])
def test_bad_budgets_are_errors_never_clamped(budget: object) -> None:
    with pytest.raises(BudgetError):
        resolve_budget(budget, 10)  # type: ignore[arg-type]


def test_budget_above_pool_size_is_an_error() -> None:
    with pytest.raises(BudgetError, match="larger than the pool"):
        make_selector("random").select(tiny_pool(10), 11)


def test_cli_budget_text_parses_to_count_or_fraction() -> None:
    assert parse_budget("50") == 50 and isinstance(parse_budget("50"), int)
    assert parse_budget("0.1") == 0.1 and parse_budget("1.0") == 1.0
    with pytest.raises(BudgetError):
        parse_budget("ten")


def test_top_k_is_stable_and_refuses_nan() -> None:
    scores = np.array([1.0, 3.0, 3.0, 2.0, 3.0])
    assert top_k(scores, 3).tolist() == [1, 2, 4]
    assert top_k(scores, 2, candidates=np.array([0, 3, 4])).tolist() == [4, 3]
    with pytest.raises(ValueError, match="NaN"):
        top_k(np.array([1.0, np.nan]), 1)


@pytest.fixture(scope="session")
def tiny_scar_ranker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SCAR ranker checkpoint over a tiny random BERT (the default ranker trains for minutes)."""
    from scar_helpers import make_tiny_bert, make_tiny_ranker

    bert = make_tiny_bert(tmp_path_factory.mktemp("bert"))
    return make_tiny_ranker(tmp_path_factory.mktemp("scar") / "ckpt", bert)


def _light_params(name: str, tiny_model: Path, tiny_ranker: Path) -> dict:
    """Model-backed selectors get the tiny test models, so the suite runs them offline and fast."""
    fields = {f.name for f in dataclasses.fields(available()[name])}
    params: dict = {}
    if "ranker" in fields:
        params["ranker"] = str(tiny_ranker)
    if "model" in fields:
        params["model"] = str(tiny_model)
    if "engine" in fields:
        params["engine"] = "hf"
    return params


@pytest.mark.parametrize("name", sorted(available()))
def test_every_registered_selector_passes_the_conformance_suite(
    name: str, tiny_llama_dir: Path, tiny_scar_ranker: Path
) -> None:
    check_selector(make_selector(name, **_light_params(name, tiny_llama_dir, tiny_scar_ranker)))


def test_conformance_suite_catches_a_selector_that_clamps_budgets() -> None:
    @dataclass(kw_only=True)
    class Clamping:
        name = "clamping"

        def select(self, pool, budget, *, seed=0):  # type: ignore[no-untyped-def]
            from selectbench.selectors import make_selection

            k = min(int(budget) if budget >= 1 else max(1, int(budget * len(pool))), len(pool))
            return make_selection(self, pool, budget, seed, list(range(k)))

    with pytest.raises(AssertionError):
        check_selector(Clamping())


def test_conformance_checks_are_named_and_score_checks_apply_to_score_selectors_only() -> None:
    names = [check.name for check in CHECKS]
    assert len(set(names)) == len(names) and "select equals select_from_scores on the same scores" in names
    assert len(checks_for(make_selector("longest"))) == len(CHECKS)
    assert not any(check.score_selectors_only for check in checks_for(make_selector("random")))
    for check in checks_for(make_selector("longest")):
        check(make_selector("longest"))  # each runs on its own, over the tiny pool by default


def test_conformance_suite_names_a_select_that_is_not_select_from_scores() -> None:
    @dataclass(kw_only=True)
    class ExtraInfo(ScoreSelector):
        name = "extra-info"

        def score(self, pool):  # type: ignore[no-untyped-def]
            return np.asarray([len(text) for text in pool.texts("response")], dtype=np.float64)

        def select(self, pool, budget, *, seed=0):  # type: ignore[no-untyped-def]
            # The IFD bug this check was made for: a field that select adds and select_from_scores does not.
            selection = super().select(pool, budget, seed=seed)
            return dataclasses.replace(selection, info={**selection.info, "note": 1})

    with pytest.raises(AssertionError, match=r"^\[select equals select_from_scores on the same scores\].*info"):
        check_selector(ExtraInfo())


def test_a_selectors_info_hook_reads_the_score_fields_select_from_scores_is_given() -> None:
    @dataclass(kw_only=True)
    class Tagged(ScoreSelector):
        name = "tagged"
        info_fields = ("tag",)

        def score(self, pool):  # type: ignore[no-untyped-def]
            return np.arange(len(pool), dtype=np.float64)

        def score_fields(self, pool):  # type: ignore[no-untyped-def]
            return {"score": self.score(pool), "tag": np.asarray(["a", "b"] * (len(pool) // 2), dtype=object)}

        def selection_info(self, pool, fields):  # type: ignore[no-untyped-def]
            return {"tags": sorted(set(fields["tag"]))} if "tag" in fields else {}

    pool, selector = tiny_pool(10), Tagged()
    assert selector.select(pool, 3).info == {"tags": ["a", "b"]}
    assert selector.select_from_scores(pool, selector.score_fields(pool), 3).info == {"tags": ["a", "b"]}
    assert selector.select_from_scores(pool, selector.score(pool), 3).info == {}  # the scores alone
    with pytest.raises(ValueError, match="no 'score' column"):
        selector.select_from_scores(pool, {"tag": []}, 3)
    check_selector(selector)


def test_random_is_reproducible_per_seed_and_differs_across_seeds() -> None:
    pool = tiny_pool(40)
    selector = make_selector("random")
    a, b, c = (selector.select(pool, 10, seed=s) for s in (0, 0, 1))
    assert a.ids == b.ids and a.ids != c.ids
    assert a.indices == np.random.default_rng(0).permutation(40)[:10].tolist()
    assert a.scores is None


def _words(text: str) -> int:
    return len(re.findall(r"\w+|[^\w\s]", text))


def test_longest_picks_the_longest_responses_by_words_with_ties_to_lower_index(tmp_path: Path) -> None:
    responses = ["one two three", "a, b; c!", "x", "tie tie tie tie", "tie tie tie tie", "don't stop", "fine"]
    rows = [
        {"instruction": f"Instruction {i} that is long " * 30, "input": "", "output": r}
        for i, r in enumerate(responses)
    ]
    pool = load_pool(write_jsonl(tmp_path / "p.jsonl", rows))
    selection = make_selector("longest").select(pool, 4)
    # words: 3, 6 ("a , b ; c !"), 1, 4, 4, 4 ("don ' t stop"), 1
    assert selection.indices == [1, 3, 4, 5]
    assert selection.scores == [6.0, 4.0, 4.0, 4.0]
    assert [_words(responses[i]) for i in selection.indices] == [6, 4, 4, 4]


def test_longest_counts_unicode_words_like_python_re() -> None:
    text = "naïve café — 東京 ٣٤ x_y"
    pool = pool_from_records([{"instruction": "i", "output": text}, {"instruction": "j", "output": "a"}])
    assert make_selector("longest").score(pool).tolist() == [float(_words(text)), 1.0]


def test_longest_chars_counts_code_points() -> None:
    pool = pool_from_records([{"instruction": "i", "output": "héllo"}, {"instruction": "j", "output": "東京東京東京"}])
    assert make_selector("longest", unit="chars").score(pool).tolist() == [5.0, 6.0]


def test_longest_tokens_uses_the_named_tokenizer(tiny_tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    texts = ["alpha beta gamma", "alpha", "beta beta beta beta beta"]
    pool = pool_from_records([{"instruction": f"i{i}", "output": t} for i, t in enumerate(texts)])
    scores = make_selector("longest", unit="tokens", tokenizer=str(tiny_tokenizer_dir)).score(pool)
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    assert scores.tolist() == [float(len(tokenizer(t, add_special_tokens=False)["input_ids"])) for t in texts]
    assert scores.tolist() == [3.0, 1.0, 5.0]


def test_longest_tokens_without_a_tokenizer_is_an_error() -> None:
    with pytest.raises(SelectbenchError, match="needs tokenizer"):
        make_selector("longest", unit="tokens")


def test_unknown_names_get_did_you_mean() -> None:
    with pytest.raises(SelectbenchError, match=r"unknown selector 'randon'\. Did you mean 'random'\?"):
        make_selector("randon")


def test_register_adds_a_selector_and_refuses_a_taken_name() -> None:
    @register("test-shortest")
    @dataclass(kw_only=True)
    class Shortest(ScoreSelector):
        """Shortest responses first."""

        def score(self, pool):  # type: ignore[no-untyped-def]
            return -make_selector("longest", unit="chars").score(pool)

    try:
        assert available()["test-shortest"] is Shortest
        check_selector(make_selector("test-shortest"))
        with pytest.raises(SelectbenchError, match="already taken"):
            register("test-shortest")(type("Other", (), {}))
    finally:
        REGISTRY.pop("test-shortest")


def test_selectors_do_no_work_in_the_constructor() -> None:
    # A tokenizer that does not exist only fails when scoring, never when building the selector.
    selector = make_selector("longest", unit="tokens", tokenizer="/nonexistent/tokenizer")
    with pytest.raises(SelectbenchError, match="no such file or folder"):
        selector.score(tiny_pool(3))
