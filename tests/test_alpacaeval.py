"""alpacaeval: end to end through the alpaca-eval library against a fake OpenAI-compatible judge, a local judge
read from next-token probabilities, and where the length-controlled win rate applies."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from evaluate_helpers import JUDGE_MODEL, FakeOpenAI, judge_probability

from selectbench.evaluate.alpacaeval import LocalJudgeCompletions, length_controlled_applicable
from selectbench.evaluate.benchmarks import evaluate

SECRET = "sk-test-secret-never-on-disk-123"

ITEMS = [
    {"id": "a", "instruction": "Name a colour.", "input": "", "output": "Blue."},
    {"id": "b", "instruction": "Describe the sea.", "input": "", "output": "The sea is wide, salty and deep."},
    {"id": "c", "instruction": "Copy this.", "input": "", "output": "Exactly this reference answer."},
    {"id": "d", "instruction": "Give advice.", "input": "about sleep", "output": "Sleep eight hours."},
    {"id": "e", "instruction": "Explain rain.", "input": "", "output": "Water vapour condenses into drops " * 3},
    {"id": "f", "instruction": "Say hello.", "input": "", "output": "Hello there, how are you doing today?"},
]
ANSWERS = {
    "Name a colour.": "Red, a warm colour often linked with energy and danger.",
    "Describe the sea.": "Big.",
    "Copy this.": "Exactly this reference answer.",  # equal to the reference: a draw without asking the judge
    "Give advice.\n\nabout sleep": "Keep a regular schedule and avoid screens late at night.",
    "Explain rain.": "Clouds.",
    "Say hello.": "Hello there, how are you doing today?!",
}


def _instructions(tmp_path: Path) -> Path:
    path = tmp_path / "instructions.jsonl"
    path.write_text("".join(json.dumps(item) + "\n" for item in ITEMS))
    return path


def _run(server: FakeOpenAI, instructions: Path, out: Path, **extra: object) -> dict:
    return evaluate(
        "alpacaeval",
        "fake-model",
        out_dir=out,
        engine="openai",
        engine_options={"base_url": server.url, "api_key_env": "SB_FAKE_KEY"},
        progress=False,
        instructions=str(instructions),
        judge="openai",
        judge_model=JUDGE_MODEL,
        judge_url=server.url,
        judge_api_key_env="SB_FAKE_KEY",
        **extra,
    )


def test_win_rate_equals_the_fake_judges_preferences(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SB_FAKE_KEY", SECRET)
    instructions = _instructions(tmp_path)
    out = tmp_path / "run"
    with FakeOpenAI(answer=lambda text: ANSWERS[text]) as server:
        summary = _run(server, instructions, out)
        judged_first = len(server.judged())
        generated_first = len(server.generated())

        # Re-running (forced) takes generations and verdicts from their caches: no new request at all.
        again = _run(server, instructions, out, force=True)
        assert len(server.judged()) == judged_first and len(server.generated()) == generated_first
    # (alpaca-eval's JSON cache keeps 10 significant digits)
    assert again["win_rate"]["value"] == pytest.approx(summary["win_rate"]["value"], abs=1e-6)

    # What the judge's probabilities imply, whatever order alpaca-eval showed the two outputs in.
    wins = []
    for item in ITEMS:
        user = item["instruction"] + (f"\n\n{item['input']}" if item["input"] else "")
        model, reference = ANSWERS[user], item["output"]
        wins.append(0.5 if model == reference else judge_probability(model, reference))
    expected = 100 * sum(wins) / len(wins)
    sem = 100 * math.sqrt(sum((w - sum(wins) / len(wins)) ** 2 for w in wins) / (len(wins) - 1) / len(wins))
    assert summary["win_rate"]["value"] == pytest.approx(expected, abs=1e-6)
    assert summary["win_rate"]["stderr"] == pytest.approx(sem, abs=1e-6)
    assert summary["win_rate"]["n"] == len(ITEMS)
    discrete = [0.5 if w == 0.5 else float(w > 0.5) for w in wins]
    assert summary["discrete_win_rate"]["value"] == pytest.approx(100 * sum(discrete) / len(discrete))

    # The identical pair never reached the judge; every other pair did, once, with the key from the environment.
    assert judged_first == len(ITEMS) - 1
    assert generated_first == len(ITEMS)
    assert all(a == f"Bearer {SECRET}" for a in server.auth)

    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [i["id"] for i in ITEMS]
    assert [r["win"] for r in rows] == pytest.approx(wins, abs=1e-9)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["judge"]["api_key_env"] == "SB_FAKE_KEY" and meta["judge"]["kind"] == "openai"
    assert "length-controlled GLM" in meta["absent_metrics"]["length_controlled_win_rate"]
    assert "length_controlled_win_rate" not in summary
    assert (out / "DONE").exists() and (out / "judge" / "annotations_cache.json").exists()
    assert (out / "judge" / "annotations.json").exists()

    # The key is nowhere on disk: not in the run folder, not in the generation cache.
    for folder in (out, Path(meta["generation"]["cache_file"]).parent):
        for path in folder.rglob("*"):
            if path.is_file():
                assert SECRET not in path.read_text(errors="replace"), path


def test_nothing_is_written_inside_the_alpaca_eval_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import alpaca_eval

    package = Path(alpaca_eval.__file__).parent
    before = {p for p in package.rglob("*") if "__pycache__" not in p.parts}
    monkeypatch.setenv("SB_FAKE_KEY", SECRET)
    with FakeOpenAI(answer=lambda text: ANSWERS[text]) as server:
        _run(server, _instructions(tmp_path), tmp_path / "run", limit=3)
    after = {p for p in package.rglob("*") if "__pycache__" not in p.parts}
    assert after == before


def test_missing_judge_key_fails_before_generating(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from selectbench.errors import SelectbenchError

    monkeypatch.delenv("SB_FAKE_KEY", raising=False)
    with FakeOpenAI() as server, pytest.raises(SelectbenchError, match="SB_FAKE_KEY is not set"):
        _run(server, _instructions(tmp_path), tmp_path / "run")
    assert server.requests == []


def test_local_judge_reads_the_identifier_probabilities(tiny_llama_dir: Path) -> None:
    import torch
    from alpaca_eval.completion_parsers import logprob_parser
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selectbench.models.engines.factory import make_engine

    prompt = (
        "<|im_start|>system\nYou pick the better output.\n<|im_end|>\n<|im_start|>user\n"
        "Which is better, m or M?\n<|im_end|>"
    )
    judge = LocalJudgeCompletions(make_engine("hf", str(tiny_llama_dir), progress=False))
    reply = judge([prompt, prompt.replace("Which is better", "Which is worse")])
    # A direct computation: the judge's next-token distribution after its own chat template.
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    for text, completion in zip(["better", "worse"], reply["completions_all"], strict=True):
        messages = [
            {"role": "system", "content": "You pick the better output."},
            {"role": "user", "content": f"Which is {text}, m or M?"},
        ]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        with torch.no_grad():
            logits = model(torch.tensor([ids["input_ids"]])).logits[0, -1]
        logprobs = torch.log_softmax(logits, -1)
        m, big_m = tokenizer("m")["input_ids"][0], tokenizer("M")["input_ids"][0]
        top = {t["token"]: t["logprob"] for t in completion["logprobs"]["content"][0]["top_logprobs"]}
        assert top["m"] == pytest.approx(logprobs[m].item(), abs=1e-4)
        assert top["M"] == pytest.approx(logprobs[big_m].item(), abs=1e-4)
        # alpaca-eval's own parser turns them into the weighted preference 2 - P(m | m or M).
        p_m = math.exp(top["m"]) / (math.exp(top["m"]) + math.exp(top["M"]))
        (preference,) = logprob_parser(
            completion, numerator_token="m", denominator_tokens=["m", "M"], is_binarize=False
        )
        assert preference == pytest.approx(2 - p_m)


def test_length_controlled_win_rate_needs_the_whole_official_set() -> None:
    official = [{"meta": {"dataset": "helpful_base"}}] * 805
    assert length_controlled_applicable(805, None, official) is None
    assert "--limit 20" in length_controlled_applicable(805, 20, official)
    assert "has 70 items" in length_controlled_applicable(70, None, [{"meta": {}}] * 70)
    assert "has 805 items" in length_controlled_applicable(805, None, [{"meta": {}}] * 805)


@pytest.mark.slow
def test_alpacaeval_with_a_local_model_judge(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """The bundled SmolLM2 judges the tiny model's answers on the demo instructions, all on this CPU."""
    out = tmp_path / "run"
    summary = evaluate(
        "alpacaeval",
        str(tiny_llama_dir),
        out_dir=out,
        limit=4,
        engine="hf",
        progress=False,
        max_new_tokens=8,
        judge="local",
        judge_model="smollm2-135m-instruct",
        judge_engine="hf",
    )
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    wins = [r["win"] for r in rows]
    assert len(wins) == 4 and all(0 < w < 1 for w in wins)  # a soft verdict for every item
    assert summary["win_rate"]["value"] == pytest.approx(100 * sum(wins) / 4)
    assert summary["win_rate"]["n"] == 4
    meta = json.loads((out / "meta.json").read_text())
    assert meta["judge"]["kind"] == "local" and meta["judge"]["prompts_judged"] == 4
    assert "length_controlled_win_rate" in meta["absent_metrics"]
