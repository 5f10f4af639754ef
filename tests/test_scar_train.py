"""SCAR ranker training (filters, loss, split, model selection) and training-data construction (build-data)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from conftest import run_cli, write_jsonl
from scar_helpers import make_tiny_bert, quadruple_rows, write_rows

from selectbench.errors import InputError, SelectbenchError
from selectbench.selectors.scar.config import ScarTrainConfig
from selectbench.selectors.scar.data import build_data, build_quadruples, parse_rating
from selectbench.selectors.scar.model import load_ranker
from selectbench.selectors.scar.train import (
    PAIRS,
    Quadruple,
    _batch_loss,
    load_quadruples,
    pair_masks,
    pair_passes,
    pairwise_accuracy,
    split_rows,
    train_ranker,
)


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def still_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """No dropout: train-mode outputs are deterministic, so the loss can be recomputed by hand."""
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert-still"), dropout=0.0)


def _quad(texts: dict[str, str] | None = None, **ratings: tuple[Any, Any]) -> Quadruple:
    """A row with answers ``h``/``r``/``d`` (or ``texts``) rated (7, 7) unless ``kind=(help, correct)`` says."""
    table = {k: {"helpfulness": 7.0, "correctness": 7.0} for k in ("human", "referenced", "direct")}
    for kind, (help_, correct) in ratings.items():
        table[kind] = {"helpfulness": help_, "correctness": correct}
    answers = {"human": "h", "referenced": "r", "direct": "d", **(texts or {})}
    return Quadruple("x", "instruction", answers, table)


# ---------------------------------------------------------------------------------------------- filters and split


def test_pair_filter_needs_both_answers_above_five_and_different() -> None:
    config = ScarTrainConfig()
    assert pair_passes(_quad(), "direct", "human", config)
    # Mean of the two aspects must be strictly above 5: (6 + 4) / 2 = 5 fails, (6 + 5) / 2 = 5.5 passes.
    assert not pair_passes(_quad(human=(6, 4)), "direct", "human", config)
    assert pair_passes(_quad(human=(6, 5)), "direct", "human", config)
    assert pair_passes(_quad(human=(9, 9)), "direct", "human", config)  # max < 10 is no bound on 0-9
    # Identical answers never form a pair.
    assert not pair_passes(_quad({"referenced": "same", "direct": "same"}), "direct", "referenced", config)
    # A rating that could not be parsed (None) fails the filter.
    assert not pair_passes(_quad(direct=(None, 8)), "direct", "referenced", config)
    # Only the pair's own two answers matter.
    assert pair_passes(_quad(human=(1, 1)), "direct", "referenced", config)


def test_pair_filter_modes_and_score_types() -> None:
    q = _quad(human=(2, 8), direct=(9, 9))
    assert not pair_passes(q, "direct", "human", ScarTrainConfig())  # help_correct: 5.0
    assert pair_passes(q, "direct", "human", ScarTrainConfig(score_type="correct"))
    assert not pair_passes(q, "direct", "human", ScarTrainConfig(score_type="help"))
    assert pair_passes(q, "direct", "human", ScarTrainConfig(constraint_mode="none"))
    assert pair_passes(q, "direct", "human", ScarTrainConfig(constraint_mode="abs_pos"))  # only s1 = 9 in (5, 10)
    assert pair_passes(q, "direct", "human", ScarTrainConfig(constraint_mode="diff", constraint_max=5))  # |9-5| < 5
    assert not pair_passes(q, "direct", "human", ScarTrainConfig(constraint_mode="abs_diff", constraint_max=5))


def test_unrated_rows_need_constraint_mode_none() -> None:
    rows = [Quadruple("a", "i", {"human": "h", "referenced": "r", "direct": "d"}, None)]
    with pytest.raises(SelectbenchError, match="constraint_mode=none"):
        pair_masks(rows, ScarTrainConfig())
    assert all(m.all() for m in pair_masks(rows, ScarTrainConfig(constraint_mode="none")).values())


def test_bundled_quadruples_load_and_most_pairs_pass_the_filter() -> None:
    from selectbench.selectors.scar.selector import BUNDLED_DATA

    rows = load_quadruples(BUNDLED_DATA)
    assert len(rows) == 160
    masks = pair_masks(rows, ScarTrainConfig())
    counts = {pair: int(m.sum()) for pair, m in masks.items()}
    assert counts == {("direct", "referenced"): 128, ("referenced", "human"): 140, ("direct", "human"): 137}


@pytest.mark.parametrize("n", [160, 10, 37, 6])
def test_split_is_scikit_learns_80_10_10_with_seed_42(n: int) -> None:
    sklearn = pytest.importorskip("sklearn.model_selection")
    items = list(range(n))
    train, holdout = sklearn.train_test_split(items, test_size=0.2, random_state=42)
    test, val = sklearn.train_test_split(holdout, test_size=0.5, random_state=42)
    assert split_rows(n) == (train, val, test)
    if n == 160:
        assert (len(train), len(val), len(test)) == (128, 16, 16)


def test_too_few_quadruples_to_split_is_an_error(encoder_dir: Path, tmp_path: Path) -> None:
    data = write_rows(
        tmp_path / "quads.jsonl", quadruple_rows(5)
    )  # holdout of 1 row: it goes to validation, none to test
    with pytest.raises(SelectbenchError, match="1 validation / 0 test rows; each needs at least one"):
        train_ranker(data, tmp_path / "r", ScarTrainConfig(encoder=str(encoder_dir)), progress=False)


def test_pairwise_accuracy_counts_the_three_orderings_over_all_rows() -> None:
    scores = {
        "direct": np.array([3.0, 1.0]),
        "referenced": np.array([2.0, 2.0]),
        "human": np.array([1.0, 2.0]),
    }
    # row 0: d>r, d>h, r>h all hold (3); row 1: d>r no, d>h no, r>h no (ties are not wins) -> 3 / 6.
    assert pairwise_accuracy(scores) == 0.5


# ---------------------------------------------------------------------------------------------- the loss


def test_batch_loss_is_the_sum_of_margin_terms_plus_weighted_triplets(still_encoder_dir: Path) -> None:
    from selectbench.selectors.scar.model import new_ranker, pad_batch, tokenize_texts

    torch.manual_seed(0)
    model, tokenizer = new_ranker(str(still_encoder_dir), linear_dim=16)
    model.train()
    rows = [
        Quadruple(
            q["id"],
            q["instruction"],
            {k: q[k] for k in ("human", "referenced", "direct")},
            {k: {a: float(v) for a, v in r.items()} for k, r in q["ratings"].items()},
        )
        for q in quadruple_rows(6)
    ]
    # Rows 0 and 5 rate their direct answer (8 + 2) / 2 = 5: their (direct, *) pairs fail; all else passes.
    config = ScarTrainConfig(constraint_min=5.0)
    masks = pair_masks(rows, config)
    assert not masks[("direct", "human")][5] and masks[("referenced", "human")][5]
    ins_ids = tokenize_texts(tokenizer, [q.instruction for q in rows], 512)
    ans_ids = {
        k: tokenize_texts(tokenizer, [q.answers[k] for q in rows], 512) for k in ("human", "referenced", "direct")
    }
    batch = [1, 5, 2]
    rank, triplet = torch.nn.MarginRankingLoss(margin=0.5), torch.nn.TripletMarginLoss(margin=1.0, p=2)
    loss = _batch_loss(model, tokenizer, batch, ins_ids, ans_ids, masks, config, "cpu", rank, triplet)

    with torch.no_grad():
        ins = pad_batch(tokenizer, [ins_ids[i] for i in batch], "cpu")
        out = {}
        for kind in ("direct", "referenced", "human"):
            ans = pad_batch(tokenizer, [ans_ids[kind][i] for i in batch], "cpu")
            out[kind] = model(*ins, *ans)
        expected = 0.0
        for a, b in PAIRS:
            keep = masks[(a, b)][batch]
            diff = (out[a][0] - out[b][0]).numpy()[keep]
            expected += float(np.mean(np.maximum(0.0, 0.5 - diff)))
        every = np.logical_and.reduce([masks[p][batch] for p in PAIRS])
        assert every.tolist() == [True, False, True]

        def trip(anchor, pos, neg):  # type: ignore[no-untyped-def]
            d_pos = torch.norm(anchor - pos + 1e-6, dim=-1)
            d_neg = torch.norm(anchor - neg + 1e-6, dim=-1)
            return float(torch.clamp(d_pos - d_neg + 1.0, min=0).mean())

        e = torch.from_numpy(every)
        l_c = trip(out["referenced"][1][e], out["human"][1][e], out["direct"][1][e])
        l_p = trip(out["direct"][2][e], out["referenced"][2][e], out["human"][2][e])
        expected += 0.1 * 0.5 * (l_c + l_p)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)


def test_a_batch_where_nothing_passes_gives_no_loss(still_encoder_dir: Path) -> None:
    from selectbench.selectors.scar.model import new_ranker

    model, tokenizer = new_ranker(str(still_encoder_dir), linear_dim=16)
    rows = [_quad(human=(1, 1), referenced=(1, 1), direct=(1, 1))]
    masks = pair_masks(rows, ScarTrainConfig())
    loss = _batch_loss(model, tokenizer, [0], [[2, 3]], {k: [[2, 3]] for k in ("human", "referenced", "direct")},
                       masks, ScarTrainConfig(), "cpu", None, None)  # fmt: skip
    assert loss is None


# ---------------------------------------------------------------------------------------------- training


def test_training_writes_a_checkpoint_meta_and_done_and_skips_when_finished(encoder_dir: Path, tmp_path: Path) -> None:
    data = write_rows(tmp_path / "quads.jsonl", quadruple_rows(20))
    config = ScarTrainConfig(encoder=str(encoder_dir), epochs=2, linear_dim=16, lr=1e-3)
    meta = train_ranker(data, tmp_path / "ranker", config, progress=False)
    out = tmp_path / "ranker"
    assert {"config.json", "pytorch_model.bin", "meta.json", "DONE"} <= {p.name for p in out.iterdir()}
    written = json.loads((out / "meta.json").read_text())
    assert written["config"] == config.to_dict()
    assert written["split"]["train"] == 16 and written["split"]["val"] == 2 and written["split"]["test"] == 2
    assert [h["epoch"] for h in written["history"]] == [1, 2]
    best = max(written["history"], key=lambda h: h["val_accuracy"])  # first of the best, as "strictly better"
    assert written["best_epoch"] == best["epoch"] and written["val_accuracy"] == best["val_accuracy"]
    assert 0.0 <= written["test_accuracy"] <= 1.0
    assert written["train_pairs_passing_filter"]["referenced>human"] == 16
    load_ranker(out, device="cpu")  # strict load of what training wrote
    # Same data, config and encoder: nothing is retrained.
    mtime = (out / "pytorch_model.bin").stat().st_mtime_ns
    assert train_ranker(data, out, config, progress=False)["history"] == meta["history"]
    assert (out / "pytorch_model.bin").stat().st_mtime_ns == mtime


def test_training_keeps_the_best_validation_epoch(encoder_dir: Path, tmp_path: Path) -> None:
    data = write_rows(tmp_path / "quads.jsonl", quadruple_rows(20))
    config = ScarTrainConfig(encoder=str(encoder_dir), epochs=3, linear_dim=16, lr=5e-3, seed=1)
    meta = train_ranker(data, tmp_path / "ranker", config, progress=False)
    # The saved weights are the best epoch's: re-scoring the validation rows gives the recorded accuracy.
    loaded = load_ranker(tmp_path / "ranker", device="cpu")
    from selectbench.selectors.scar.model import score_pairs

    rows = {q.id: q for q in load_quadruples(data)}
    val = [rows[i] for i in meta["split"]["val_ids"]]
    scores = {
        k: score_pairs(loaded.model, loaded.tokenizer, [q.instruction for q in val], [q.answers[k] for q in val])
        for k in ("human", "referenced", "direct")
    }
    assert pairwise_accuracy(scores) == pytest.approx(meta["val_accuracy"])


def test_config_is_strict_and_reports_every_problem() -> None:
    with pytest.raises(SelectbenchError) as err:
        ScarTrainConfig.from_dict({"lr": "fast", "epoch": 3, "batch_size": 2})
    message = str(err.value)
    assert "unknown key 'epoch'" in message and "lr must be float" in message and "Valid keys: encoder" in message
    assert ScarTrainConfig.from_dict({"lr": 1, "epochs": 2}).lr == 1.0
    assert ScarTrainConfig.from_dict({"lr": "2e-5"}).lr == 2e-5  # what --set lr=2e-5 gives through YAML
    with pytest.raises(SelectbenchError, match="score_type must be one of"):
        ScarTrainConfig.from_dict({"score_type": "vibes"})


def test_bad_quadruple_rows_name_the_line_and_field(tmp_path: Path) -> None:
    rows = quadruple_rows(3)
    rows[1]["ratings"]["direct"]["correctness"] = 12
    with pytest.raises(InputError, match=r"line 2, field 'ratings\.direct\.correctness': expected a number 0-9"):
        load_quadruples(write_rows(tmp_path / "bad.jsonl", rows))
    rows = quadruple_rows(3)
    del rows[2]["referenced"]
    with pytest.raises(InputError, match=r"line 3, field 'referenced'"):
        load_quadruples(write_rows(tmp_path / "bad2.jsonl", rows))
    nulls = quadruple_rows(2)
    nulls[0]["ratings"]["human"]["helpfulness"] = None  # missing ratings load as None
    assert load_quadruples(write_rows(tmp_path / "ok.jsonl", nulls))[0].ratings["human"]["helpfulness"] is None


def test_cli_train_writes_a_ranker_and_rejects_unknown_settings(encoder_dir: Path, tmp_path: Path) -> None:
    data = write_rows(tmp_path / "quads.jsonl", quadruple_rows(10))
    out = tmp_path / "ranker"
    result = run_cli(
        "scar", "train", "--data", str(data), "--encoder", str(encoder_dir), "--out", str(out),
        "--set", "epochs=1", "--set", "linear_dim=8",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "validation pairwise accuracy" in result.stdout
    assert json.loads((out / "config.json").read_text())["linear_dim"] == 8
    assert (out / "DONE").exists()
    bad = run_cli("scar", "train", "--data", str(data), "--out", str(tmp_path / "x"), "--set", "epochz=1")
    assert bad.returncode == 2
    assert "unknown key 'epochz'" in bad.stderr and "Traceback" not in bad.stderr


# ---------------------------------------------------------------------------------------------- build-data


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is fine.\nFinal score: 7", 7.0),
        ("Reasoning...\n**Final score:** 8", 8.0),
        ("final rating = 3", 3.0),
        ("Score: 4. On reflection, Final score: 6", 6.0),  # the explicit final line decides
        ("I would give it 6/9.", 6.0),
        ("That is 5 out of 9", 5.0),
        ("My score is 2", 2.0),
        ("Final score: 12", None),  # out of range is not a rating
        ("N/A", None),  # never 0
        ("no idea", None),
        ("", None),
        ("Final score: 3 ... Final score: 5", None),  # conflicting: missing, not a guess
        ("Final score: 4. Final score: 4. score: 7", 4.0),
    ],
)
def test_ratings_parse_or_are_missing(text: str, expected: float | None) -> None:
    assert parse_rating(text) == expected


class FakeGenerator:
    """Answers by prompt kind; the judge replies with a rating that depends on the answer (one unparseable)."""

    name = "fake"
    model = "fake-model"
    fingerprint = "fake:1"

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def generate(self, conversations, decoding, *, adapter=None):  # type: ignore[no-untyped-def]
        self.calls.append({"count": len(conversations), **decoding.as_dict()})
        out = []
        for conv in conversations:
            text = conv[-1]["content"]
            if text.startswith("### Reference answer"):
                out.append(["  REWRITE of: " + text.split("\n")[1] + "  "])
            elif text.startswith("### What to do"):
                out.append(["DIRECT answer"])
            elif "human answer two" in text:
                out.append(["I cannot decide."])
            elif "REWRITE" in text:
                out.append(["Looks right.\nFinal score: 8"])
            else:
                out.append(["Fine.\nFinal score: 6"])
        return out

    def describe(self) -> dict[str, Any]:
        return {"engine": "fake", "model": self.model}

    def close(self) -> None:
        pass


def test_build_quadruples_generates_rewrites_direct_answers_and_ratings() -> None:
    pairs = [
        {"id": "a", "instruction": "Explain one.", "human": "human answer one", "domain": "open"},
        {"id": "b", "instruction": "Explain two.", "human": "human answer two"},
    ]
    gen = FakeGenerator()
    rows, raw = build_quadruples(pairs, gen, progress=False)
    assert rows[0] == {
        "id": "a",
        "instruction": "Explain one.",
        "domain": "open",
        "human": "human answer one",
        "referenced": "REWRITE of: human answer one",
        "direct": "DIRECT answer",
        "ratings": {
            "human": {"helpfulness": 6.0, "correctness": 6.0},
            "referenced": {"helpfulness": 8.0, "correctness": 8.0},
            "direct": {"helpfulness": 6.0, "correctness": 6.0},
        },
    }
    assert rows[1]["ratings"]["human"] == {"helpfulness": None, "correctness": None}  # unparseable: missing
    assert raw[1]["judge"]["human"]["helpfulness"] == "I cannot decide."
    assert all(c["temperature"] == 0.0 and c["n"] == 1 for c in gen.calls)  # greedy, as the reference
    assert [c["count"] for c in gen.calls] == [2, 2, 12]  # referenced, direct, then 2 x 3 answers x 2 aspects


def test_build_data_output_trains_and_resumes_from_its_cache(tmp_path: Path) -> None:
    pool = write_jsonl(
        tmp_path / "pairs.jsonl",
        [
            {"instruction": f"Task {i}", "input": "ctx" if i == 0 else "", "output": f"human answer {i}"}
            for i in range(3)
        ],
    )
    out = tmp_path / "quads.jsonl"
    gen = FakeGenerator()
    meta = build_data(str(pool), out, model="fake", generator=gen, progress=False)
    rows = load_quadruples(out)
    assert [q.instruction for q in rows] == ["Task 0\n\n### Input:\nctx", "Task 1", "Task 2"]
    assert meta["missing_ratings"]["human.helpfulness"] == 0 and meta["pairs"]["n"] == 3
    assert Path(f"{out}.raw.jsonl").exists() and Path(f"{out}.meta.json").exists()
    calls = len(gen.calls)
    build_data(str(pool), tmp_path / "again.jsonl", model="fake", generator=gen, progress=False)
    assert len(gen.calls) == calls  # every chunk came from the cache
    assert (tmp_path / "again.jsonl").read_text() == out.read_text()


def test_build_data_refuses_an_api_key_as_an_option(tmp_path: Path) -> None:
    pool = write_jsonl(tmp_path / "pairs.jsonl", [{"instruction": "t", "output": "o"}])
    with pytest.raises(SelectbenchError, match="api_key_env"):
        build_data(str(pool), tmp_path / "q.jsonl", model="m", options={"api_key": "sk-1"}, generator=FakeGenerator())


class _FakeOpenAI(BaseHTTPRequestHandler):
    """A minimal OpenAI-compatible /v1/chat/completions endpoint that records the Authorization headers."""

    seen_auth: ClassVar[list[str]] = []
    requests = 0

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen_auth.append(self.headers.get("Authorization", ""))
        type(self).requests += 1
        text = body["messages"][-1]["content"]
        if text.startswith("### Reference answer"):
            content = "A rewritten answer."
        elif text.startswith("### What to do"):
            content = "A direct answer."
        else:
            content = "Reasonable.\nFinal score: 7"
        reply = {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


def test_build_data_against_an_openai_compatible_server_never_writes_the_key(
    tmp_path: Path, isolated_cache: Path
) -> None:
    pytest.importorskip("openai")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeOpenAI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    secret = "sk-test-9f8e7d6c5b4a-DO-NOT-WRITE"
    try:
        pool = write_jsonl(tmp_path / "pairs.jsonl", [{"instruction": f"Q{i}", "output": f"A{i}"} for i in range(3)])
        out = tmp_path / "quads.jsonl"
        result = run_cli(
            "scar", "build-data", "--pairs", str(pool), "--engine", "openai", "--model", "fake-model",
            "--base-url", f"http://127.0.0.1:{server.server_port}/v1", "--api-key-env", "SCAR_TEST_KEY",
            "--max-new-tokens", "64", "--judge-max-new-tokens", "64", "--out", str(out),
            env={"SCAR_TEST_KEY": secret},
        )  # fmt: skip
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stderr
    assert _FakeOpenAI.requests == 3 * 8  # 2 generations + 6 ratings per pair
    assert set(_FakeOpenAI.seen_auth) == {f"Bearer {secret}"}  # the key was used ...
    written = [out, Path(f"{out}.raw.jsonl"), Path(f"{out}.meta.json")]
    written += [p for p in isolated_cache.rglob("*") if p.is_file()]
    for path in written:  # ... and is in no file the run wrote
        assert secret not in path.read_text(encoding="utf-8", errors="replace"), path
    meta = json.loads(Path(f"{out}.meta.json").read_text())
    assert meta["generator"]["api_key_env"] == "SCAR_TEST_KEY"
    rows = load_quadruples(out)
    assert [q.answers["referenced"] for q in rows] == ["A rewritten answer."] * 3
    assert rows[0].ratings["direct"] == {"helpfulness": 7.0, "correctness": 7.0}
    assert secret not in result.stdout + result.stderr


@pytest.mark.slow
def test_build_data_with_smollm2_end_to_end(tmp_path: Path) -> None:
    pool = write_jsonl(
        tmp_path / "pairs.jsonl",
        [
            {"instruction": "Name a primary colour.", "output": "red is one lol"},
            {"instruction": "What is 2 + 2?", "output": "4 obviously"},
        ],
    )
    out = tmp_path / "quads.jsonl"
    result = run_cli(
        "scar", "build-data", "--pairs", str(pool), "--engine", "hf", "--model", "smollm2-135m-instruct",
        "--max-new-tokens", "24", "--judge-max-new-tokens", "48", "--out", str(out),
        env={"HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = load_quadruples(out)
    assert len(rows) == 2
    assert all(q.answers["referenced"].strip() and q.answers["direct"].strip() for q in rows)
    meta = json.loads(Path(f"{out}.meta.json").read_text())
    assert meta["generator"]["engine"] == "hf" and meta["decoding"]["temperature"] == 0.0
    # Every rating is a parsed 0-9 value or missing (null), never a silent 0 for a failed parse.
    raw = [json.loads(line) for line in Path(f"{out}.raw.jsonl").read_text().splitlines()]
    for q, r in zip(rows, raw, strict=True):
        for kind, aspects in q.ratings.items():
            for aspect, value in aspects.items():
                assert value == parse_rating(r["judge"][kind][aspect])
