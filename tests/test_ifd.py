"""IFD, Superfiltering and perplexity: scores equal a straightforward unbatched computation of ALGORITHMS.md."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli, write_jsonl
from transformers import AutoModelForCausalLM, AutoTokenizer

from selectbench.data import pool_from_records
from selectbench.selectors import make_selector
from selectbench.selectors.ifd import ALPACA_NO_INPUT, ALPACA_WITH_INPUT, format_prompt
from selectbench.testing import check_selector

ROWS = [
    {
        "instruction": "Write a Python function that adds two numbers.",
        "input": "",
        "output": "def add(a, b):\n    return a + b",
    },
    {"instruction": "Explain why the sky is blue.", "input": "", "output": " Sunlight scatters off air molecules."},
    {
        "instruction": "Summarise the text.",
        "input": "The quick brown fox jumps over the lazy dog.",
        "output": "A fox jumps.",
    },
    {"instruction": "Say something.", "input": "", "output": "The quick brown fox jumps over the lazy dog " * 6},
    {"instruction": "Long prompt " * 80, "input": "", "output": "too late"},
    {"instruction": "Repeat after me.", "input": "alpha beta", "output": "alpha beta gamma delta"},
]


def reference_losses(model_dir: Path, row: dict, template: str, direct_context: str, max_length: int) -> tuple:
    """Cherry's recipe, one example at a time, with an explicit loop over answer tokens."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    if template == "alpaca":
        fmt = ALPACA_WITH_INPUT if row["input"] else ALPACA_NO_INPUT
        prompt = fmt.format(instruction=row["instruction"], input=row["input"])
    else:
        prompt = f"{row['instruction']}\n{row['input']}\n" if row["input"] else f"{row['instruction']}\n"

    def mean_nll(text: str, start: int, limit: int) -> tuple[float, int]:
        ids = tokenizer(text)["input_ids"][:limit]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0]
        losses = []
        for p in range(max(start, 1), len(ids)):
            losses.append(-torch.log_softmax(logits[p - 1], -1)[ids[p]].item())
        return (sum(losses) / len(losses) if losses else math.nan), len(losses)

    prompt_len = len(tokenizer(prompt)["input_ids"])
    if max_length - prompt_len <= 0:
        return math.nan, math.nan, 0
    cond, n = mean_nll(prompt + row["output"], prompt_len, max_length)
    context = "" if direct_context == "none" else direct_context
    context_len = len(tokenizer(context)["input_ids"])
    direct, _ = mean_nll(context + row["output"], context_len, max_length - prompt_len + context_len)
    return cond, direct, n


@pytest.mark.parametrize("batch_tokens", [256, None], ids=["padded-batches", "cpu-default-one-row"])
@pytest.mark.parametrize(
    ("template", "direct_context", "max_length"),
    [("alpaca", "### Response:", 64), ("alpaca", "none", 512), ("none", "### Response:", 48)],
)
def test_ifd_equals_an_unbatched_reference(
    tiny_llama_dir: Path, template: str, direct_context: str, max_length: int, batch_tokens: int | None
) -> None:
    pool = pool_from_records(ROWS)
    selector = make_selector(
        "ifd",
        model=str(tiny_llama_dir),
        template=template,
        direct_context=direct_context,
        max_length=max_length,
        engine="hf",
        batch_tokens=batch_tokens,
    )
    fields = selector.score_fields(pool)
    for i, row in enumerate(ROWS):
        cond, direct, n = reference_losses(tiny_llama_dir, row, template, direct_context, max_length)
        if math.isnan(cond):
            assert math.isnan(fields["ifd_loss"][i]) and fields["skip"][i], i
            continue
        assert fields["loss_cond"][i] == pytest.approx(cond, abs=1e-4), i
        assert fields["loss_direct"][i] == pytest.approx(direct, abs=1e-4), i
        assert fields["ifd_loss"][i] == pytest.approx(cond / direct, abs=1e-4), i
        assert fields["ifd_ppl"][i] == pytest.approx(math.exp(cond - direct), abs=1e-4), i
        assert fields["n_answer_tokens"][i] == n


def test_prompt_that_fills_max_length_is_unscorable_and_never_selected(tiny_llama_dir: Path) -> None:
    pool = pool_from_records(ROWS)
    selector = make_selector("ifd", model=str(tiny_llama_dir), max_length=256, engine="hf", filter="none")
    fields = selector.score_fields(pool)
    assert fields["skip"][4] == "prompt fills max_length" and math.isnan(fields["ifd_loss"][4])
    selection = selector.select(pool, 1.0)
    assert 4 not in selection.indices and selection.info["n_unscorable"] == 1
    assert selection.info["unscorable_reasons"] == {"prompt fills max_length": 1}


def test_selection_drops_ifd_above_one_and_keeps_the_highest(tiny_llama_dir: Path) -> None:
    rows = [
        {"instruction": f"Task {i}: {w}", "input": "", "output": f"{w} " * (1 + i % 5)}
        for i, w in enumerate("alpha beta gamma delta fox dog quick brown lazy sky blue air".split())
    ]
    pool = pool_from_records(rows)
    selector = make_selector("ifd", model=str(tiny_llama_dir), engine="hf")
    scores = selector.score(pool)
    kept = [i for i in range(len(rows)) if scores[i] <= 1.0]
    assert 0 < len(kept) < len(rows), "fixture must have IFD on both sides of 1"
    selection = selector.select(pool, 0.5)
    expected = sorted(kept, key=lambda i: (-scores[i], i))[: max(1, math.floor(0.5 * len(kept)))]
    assert selection.indices == expected
    assert selection.info["n_filtered_out"] == len(rows) - len(kept)
    full = make_selector("ifd", model=str(tiny_llama_dir), engine="hf", budget_base="full").select(pool, 0.5)
    assert len(full.indices) == min(len(kept), math.floor(0.5 * len(rows)))


def test_presets_use_their_conventions(tiny_llama_dir: Path) -> None:
    pool = pool_from_records(ROWS[:4])
    sf = make_selector("superfiltering", model=str(tiny_llama_dir))
    assert (sf.template, sf.direct_context, sf.variant, sf.filter) == ("none", "none", "ifd_ppl", "below_one")
    ppl = make_selector("perplexity", model=str(tiny_llama_dir), engine="hf")
    fields = ppl.score_fields(pool)
    assert np.array_equal(fields["score"], fields["loss_cond"]) and np.isnan(fields["loss_direct"]).all()
    assert ppl.select(pool, 2).indices == sorted(range(4), key=lambda i: -fields["loss_cond"][i])[:2]


@pytest.mark.parametrize("name", ["ifd", "superfiltering", "perplexity"])
def test_ifd_family_passes_the_conformance_suite(tiny_llama_dir: Path, name: str) -> None:
    check_selector(make_selector(name, model=str(tiny_llama_dir), engine="hf", filter="none"))


def test_templates_match_the_reference_formats() -> None:
    assert format_prompt("alpaca", "Do X.", "").endswith("### Instruction:\nDo X.\n\n### Response:")
    assert "### Input:\nctx\n\n### Response:" in format_prompt("alpaca", "Do X.", "ctx")
    assert format_prompt("wiz", "Do X.", "") == "Do X.\n\n### Response:"
    assert format_prompt("none", "Do X.", "ctx") == "Do X.\nctx\n"
    assert format_prompt("vicuna", "Do X.", "").endswith("USER: Do X. ASSISTANT:")


def test_score_cli_lines_carry_every_ifd_field(tiny_llama_dir: Path, tmp_path: Path) -> None:
    pool = write_jsonl(tmp_path / "p.jsonl", ROWS)
    out = tmp_path / "s.jsonl"
    result = run_cli(
        "score",
        "--pool",
        str(pool),
        "--selector",
        "ifd",
        "--param",
        f"model={tiny_llama_dir}",
        "--param",
        "template=alpaca",
        "--param",
        "max_length=256",
        "--param",
        "engine=hf",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == len(ROWS)
    assert {"id", "score", "loss_cond", "loss_direct", "ifd_loss", "ifd_ppl", "n_answer_tokens"} <= set(lines[0])
    assert lines[0]["score"] == lines[0]["ifd_loss"]
    assert lines[4]["score"] is None and lines[4]["skip"] == "prompt fills max_length"


def test_scores_are_cached_by_pool_model_and_params(tiny_llama_dir: Path, isolated_cache: Path) -> None:
    pool = pool_from_records(ROWS)
    selector = make_selector("ifd", model=str(tiny_llama_dir), engine="hf")
    first = selector.score(pool)
    chunks = list((isolated_cache / "scores" / "ifd").rglob("chunk-*.json"))
    assert len(chunks) == 1
    mtime = chunks[0].stat().st_mtime_ns
    assert np.array_equal(selector.score(pool), first, equal_nan=True)
    assert chunks[0].stat().st_mtime_ns == mtime  # reused, not recomputed
    make_selector("ifd", model=str(tiny_llama_dir), engine="hf", max_length=100).score(pool)
    assert len(list((isolated_cache / "scores" / "ifd").rglob("chunk-*.json"))) == 2


@pytest.mark.slow
def test_ifd_equals_the_reference_with_smollm2(smollm2_dir: Path) -> None:
    selector = make_selector("ifd", model=str(smollm2_dir), template="alpaca", max_length=512, engine="hf")
    fields = selector.score_fields(pool_from_records(ROWS))
    for i, row in enumerate(ROWS):
        cond, direct, n = reference_losses(smollm2_dir, row, "alpaca", "### Response:", 512)
        assert fields["loss_cond"][i] == pytest.approx(cond, abs=1e-4)
        assert fields["loss_direct"][i] == pytest.approx(direct, abs=1e-4)
        assert fields["ifd_loss"][i] == pytest.approx(cond / direct, abs=1e-4)
        assert fields["n_answer_tokens"][i] == n


@pytest.mark.vllm
def test_hf_and_vllm_engines_agree(tiny_llama_dir: Path) -> None:
    from selectbench.models.engines.factory import make_engine

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    texts = [r["instruction"] + "\n" + r["output"] for r in ROWS]
    sequences = [tokenizer(t)["input_ids"][:200] for t in texts]
    starts = [len(tokenizer(r["instruction"] + "\n")["input_ids"]) for r in ROWS]
    hf_sums, hf_counts = make_engine("hf", str(tiny_llama_dir), dtype="float32", progress=False).answer_losses(
        sequences, starts
    )
    vllm = make_engine(
        "vllm", str(tiny_llama_dir), dtype="float32", max_model_len=256, gpu_memory_utilization=0.3,
        enforce_eager=True, enable_lora=False, enable_prefix_caching=False,
    )  # fmt: skip
    vllm_sums, vllm_counts = vllm.answer_losses(sequences, starts)
    assert list(vllm_counts) == list(hf_counts)
    np.testing.assert_allclose(vllm_sums / vllm_counts, hf_sums / hf_counts, atol=1e-3)


@pytest.mark.slow
def test_scoring_the_demo_pool_resumes_after_a_kill(smollm2_dir: Path, tmp_path: Path, isolated_cache: Path) -> None:
    """Kill `selectbench score` once its first chunk is on disk; the re-run keeps that chunk and its scores are
    right (checked against the unbatched reference on records from both chunks)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "scores.jsonl"
    args = [sys.executable, "-m", "selectbench", "score", "--pool", "demo", "--selector", "ifd"]
    args += ["--param", f"model={smollm2_dir}", "--param", "template=none", "--param", "max_length=48"]
    args += ["--param", "engine=hf", "--out", str(out)]
    first = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 500
    chunks: list[Path] = []
    while not chunks and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.5)
        chunks = list(isolated_cache.glob("scores/ifd/*/chunk-*.json"))
    assert chunks and first.poll() is None, "the first chunk never appeared while the run was alive"
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    assert not out.exists(), "a killed run must not leave a half-written score file"
    kept = chunks[0].stat().st_mtime_ns

    second = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    assert chunks[0].stat().st_mtime_ns == kept, "the finished chunk was recomputed"
    assert len(list(isolated_cache.glob("scores/ifd/*/chunk-*.json"))) == 2
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 411
    from selectbench.data import load_pool

    pool = load_pool("demo")
    for i in (0, 100, 255, 256, 300, 410):
        record = pool[i]
        row = {"instruction": record["instruction"], "input": record["input"], "output": record["response"]}
        cond, direct, n = reference_losses(smollm2_dir, row, "none", "### Response:", 48)
        assert lines[i]["id"] == record["id"]
        if n == 0:
            assert lines[i]["loss_cond"] is None
            continue
        assert lines[i]["loss_cond"] == pytest.approx(cond, abs=1e-4)
        assert lines[i]["loss_direct"] == pytest.approx(direct, abs=1e-4)
