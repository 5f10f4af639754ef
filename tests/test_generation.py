"""Generation engines: hf batching and adapters, the generation cache, the OpenAI-compatible client, and one vLLM
engine (started once for this module) serving two LoRA adapters, compared token for token with hf."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from evaluate_helpers import FakeOpenAI, make_lora_adapters

from selectbench.errors import SelectbenchError
from selectbench.models.engines.base import Decoding
from selectbench.models.engines.cache import GenerationCache, cached_generate
from selectbench.models.engines.factory import make_engine

PROMPTS = [
    "Explain why the sky is blue.",
    "Write a Python function that adds two numbers.",
    "Summarise the text.",
    "The quick brown fox jumps over the lazy dog, then what?",
    "def add(a, b):",
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "Say hello.",
    "Sunlight scatters off air molecules; blue light scatters the most. Why?",
]
CONVERSATIONS = [[{"role": "user", "content": p}] for p in PROMPTS]


@pytest.fixture(scope="module")
def adapters(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two LoRA adapters for the tiny Llama, each changing its outputs differently."""
    return make_lora_adapters(tiny_llama_dir, tmp_path_factory.mktemp("adapters"), seeds=(1, 2))


@pytest.fixture(scope="module")
def hf(tiny_llama_dir: Path) -> Any:
    """The hf engine on the tiny Llama (float32, small batches so batching is exercised)."""
    return make_engine("hf", str(tiny_llama_dir), batch_size=3, progress=False)


def test_batched_greedy_equals_one_at_a_time(hf: Any, adapters: list[Path]) -> None:
    decoding = Decoding(max_new_tokens=16)
    prompts = [hf.prompt_ids(c) for c in CONVERSATIONS]
    assert len({len(p) for p in prompts}) > 3  # lengths differ, so left padding matters
    # With an adapter: the random base model repeats one token, the adapted one says varied things.
    batched = hf.generate_ids(prompts, decoding, str(adapters[0]))
    single = [hf.generate_ids([p], decoding, str(adapters[0]))[0] for p in prompts]
    assert batched == single
    assert all(len(set(c[0])) > 3 for c in batched)


def test_adapters_switch_without_reloading_the_base(hf: Any, adapters: list[Path]) -> None:
    twelve = Decoding(max_new_tokens=12)
    base = hf.generate(CONVERSATIONS[:4], twelve)
    weights = hf._base
    first = hf.generate(CONVERSATIONS[:4], twelve, adapter=str(adapters[0]))
    second = hf.generate(CONVERSATIONS[:4], twelve, adapter=str(adapters[1]))
    assert hf.generate(CONVERSATIONS[:4], twelve) == base  # the adapters are off again
    assert hf.generate(CONVERSATIONS[:4], twelve, adapter=str(adapters[0])) == first
    assert first != base and second != base and first != second
    assert hf._base is weights and len(hf._adapters) == 2


def test_sampling_is_seeded_and_gives_n_completions(hf: Any) -> None:
    options = dict(max_new_tokens=10, temperature=1.0, top_p=0.9, n=3)
    once = hf.generate(CONVERSATIONS[:2], Decoding(seed=7, **options))
    assert [len(c) for c in once] == [3, 3] and len(set(once[0])) > 1
    assert hf.generate(CONVERSATIONS[:2], Decoding(seed=7, **options)) == once
    assert hf.generate(CONVERSATIONS[:2], Decoding(seed=8, **options)) != once


def test_bad_engine_options_and_decoding_are_clear_errors(tiny_llama_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(SelectbenchError, match="n=2 completions need sampling"):
        Decoding(n=2)
    with pytest.raises(SelectbenchError, match="top_p must be in"):
        Decoding(top_p=0)
    with pytest.raises(SelectbenchError, match=r"does not take option.*batch_sise.*its options: .*batch_size"):
        make_engine("hf", str(tiny_llama_dir), batch_sise=4)
    with pytest.raises(SelectbenchError, match="unknown engine 'gpu'"):
        make_engine("gpu", str(tiny_llama_dir))
    generator = make_engine("hf", str(tiny_llama_dir), progress=False)
    with pytest.raises(SelectbenchError, match="no such folder"):
        generator.generate(CONVERSATIONS[:1], Decoding(), adapter=str(tmp_path / "missing"))


def test_embeddings_are_the_last_layer_states_last_token_or_mean(
    tiny_llama_dir: Path, hf: Any, adapters: list[Path]
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    texts = PROMPTS[:5]
    ids = [hf.tokenizer(t)["input_ids"] for t in texts]
    assert len({len(i) for i in ids}) > 2  # lengths differ, so batches are padded
    batched = make_engine("hf", str(tiny_llama_dir), dtype="float32", score_batch_tokens=4096, progress=False)
    plain = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    tuned = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32), adapters[0]
    ).eval()
    for adapter, reference in ((None, plain), (str(adapters[0]), tuned)):
        with torch.no_grad():
            states = [reference(torch.tensor([i]), output_hidden_states=True).hidden_states[-1][0] for i in ids]
        want_last = np.stack([s[-1].numpy() for s in states])
        want_mean = np.stack([s.mean(0).numpy() for s in states])
        for engine in (hf, batched):  # one sequence per batch (CPU default) and padded batches
            np.testing.assert_allclose(engine.embed(texts, adapter=adapter), want_last, atol=1e-4)
            np.testing.assert_allclose(engine.embed(ids, adapter=adapter, pooling="mean"), want_mean, atol=1e-4)
    assert hf.embed(texts).shape == (5, plain.config.hidden_size)
    with pytest.raises(SelectbenchError, match="pooling must be one of"):
        hf.embed(texts, pooling="max")


class CountingGenerator:
    """A stand-in engine that answers instantly and counts what it was asked (for the cache tests)."""

    name = "fake"
    model = "fake-model"
    fingerprint = "fake:1"

    def __init__(self) -> None:
        self.asked: list[str] = []

    def generate(self, conversations: list, decoding: Decoding, *, adapter: str | None = None) -> list[list[str]]:
        self.asked += [c[-1]["content"] for c in conversations]
        return [[f"{c[-1]['content']} / {decoding.max_new_tokens}"] * decoding.n for c in conversations]

    def describe(self) -> dict:
        return {"engine": self.name}

    def close(self) -> None:
        pass


def test_generation_cache_generates_each_item_once(isolated_cache: Path) -> None:
    engine = CountingGenerator()
    greedy = Decoding(max_new_tokens=5)
    first, info = cached_generate(engine, CONVERSATIONS[:3], bench="b", decoding=greedy)
    assert engine.asked == PROMPTS[:3] and info["generated"] == 3
    # A larger limit generates only the new items; results come back in conversation order.
    more, info = cached_generate(engine, CONVERSATIONS[:5], bench="b", decoding=greedy)
    assert engine.asked == PROMPTS[:5] and info["from_cache"] == 3 and more[:3] == first
    # Other decoding or another benchmark is another cache file.
    cached_generate(engine, CONVERSATIONS[:1], bench="b", decoding=Decoding(max_new_tokens=6))
    cached_generate(engine, CONVERSATIONS[:1], bench="other", decoding=greedy)
    assert len(engine.asked) == 7
    assert len(list((isolated_cache / "generations").glob("*.jsonl"))) == 3
    # A torn last line (a killed run) is ignored: that item is generated again, the others are kept.
    path = Path(info["cache_file"])
    path.write_text(path.read_text() + '{"key": "abc", "compl')
    assert len(GenerationCache(path)._items) == 5
    cached_generate(engine, CONVERSATIONS[:5], bench="b", decoding=greedy)
    assert len(engine.asked) == 7


def test_openai_engine_sends_the_decoding_and_reads_the_key_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SB_GEN_KEY", "sk-gen-123")
    with FakeOpenAI(answer=lambda text: text.upper()) as server:
        engine = make_engine("openai", "served-model", base_url=server.url, api_key_env="SB_GEN_KEY")
        out = engine.generate(CONVERSATIONS[:3], Decoding(max_new_tokens=7, temperature=0.5, seed=3, n=2))
        assert out == [[p.upper()] * 2 for p in PROMPTS[:3]]
        sent = server.requests[0]
        assert (sent["max_tokens"], sent["temperature"], sent["seed"], sent["n"]) == (7, 0.5, 3, 2)
        # (requests run concurrently, so they may arrive in any order)
        assert sorted(r["messages"][0]["content"] for r in server.requests) == sorted(PROMPTS[:3])
        assert all(a == "Bearer sk-gen-123" for a in server.auth)
        assert "sk-gen-123" not in json.dumps(engine.describe())
        with pytest.raises(SelectbenchError, match="cannot load an adapter"):
            engine.generate(CONVERSATIONS[:1], Decoding(), adapter="x")
    monkeypatch.delenv("SB_GEN_KEY")
    with pytest.raises(SelectbenchError, match="SB_GEN_KEY is not set"):
        engine.generate(CONVERSATIONS[:1], Decoding())


# ------------------------------------------------------------------------------------------------------- vLLM


@pytest.fixture(scope="module")
def vllm_engine(tiny_llama_dir: Path) -> Any:
    """The one vLLM engine of this module (startup dominates: one to two minutes on CPU)."""
    pytest.importorskip("vllm")
    engine = make_engine(
        "vllm", str(tiny_llama_dir), dtype="float32", max_model_len=2048, max_lora_rank=8, progress=False
    )
    yield engine
    engine.close()


@pytest.mark.vllm
def test_vllm_greedy_matches_hf_token_for_token(vllm_engine: Any, hf: Any, adapters: list[Path]) -> None:
    decoding = Decoding(max_new_tokens=24)
    prompts = [vllm_engine.prompt_ids(c) for c in CONVERSATIONS]
    assert prompts == [hf.prompt_ids(c) for c in CONVERSATIONS]
    llm = vllm_engine.llm
    shares = {}
    for adapter in (None, str(adapters[0]), str(adapters[1])):
        from_vllm = vllm_engine.generate_ids(prompts, decoding, adapter)
        from_hf = hf.generate_ids(prompts, decoding, adapter)
        same = [a == b for a, b in zip(from_vllm, from_hf, strict=True)]
        shares[adapter and Path(adapter).name] = sum(same) / len(same)
        assert all(len(c[0]) > 0 for c in from_vllm)
    print(f"greedy vllm == hf token for token, share of prompts: {shares}")
    assert all(share == 1.0 for share in shares.values()), shares
    # Both adapters came from the one engine, which never restarted.
    assert vllm_engine.llm is llm
    texts = [
        vllm_engine.generate(CONVERSATIONS[:3], Decoding(max_new_tokens=12), adapter=a) for a in (None, *adapters)
    ]
    assert texts[0] != texts[1] and texts[1] != texts[2] and texts[0] != texts[2]


@pytest.mark.vllm
def test_vllm_next_token_logprobs_match_hf(vllm_engine: Any, hf: Any, adapters: list[Path]) -> None:
    tokens = [vllm_engine.tokenizer(t, add_special_tokens=False)["input_ids"][0] for t in ("m", "M")]
    for adapter in (None, str(adapters[1])):
        got = vllm_engine.next_token_logprobs(CONVERSATIONS, tokens, adapter=adapter)
        want = hf.next_token_logprobs(CONVERSATIONS, tokens, adapter=adapter)
        np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.vllm
def test_benchmarks_run_on_the_shared_vllm_engine(
    vllm_engine: Any, tiny_llama_dir: Path, adapters: list[Path], tmp_path: Path
) -> None:
    from selectbench.evaluate.benchmarks import evaluate

    llm = vllm_engine.llm
    shared = dict(generator=vllm_engine, engine="vllm", progress=False, limit=2)
    humaneval = evaluate(
        "humaneval", str(tiny_llama_dir), adapter=adapters[0], out_dir=tmp_path / "he", max_new_tokens=8, **shared
    )
    assert humaneval["pass@1"]["n"] == 2
    meta = json.loads((tmp_path / "he" / "meta.json").read_text())
    assert meta["generation"]["engine"]["engine"] == "vllm" and meta["generation"]["key"]["adapter"]
    # The judge is the model this engine serves, so it judges on the same engine (no second engine starts).
    alpaca = evaluate(
        "alpacaeval",
        str(tiny_llama_dir),
        adapter=adapters[1],
        out_dir=tmp_path / "ae",
        max_new_tokens=8,
        judge="local",
        judge_model=str(tiny_llama_dir),
        **shared,
    )
    meta = json.loads((tmp_path / "ae" / "meta.json").read_text())
    assert meta["judge"]["engine"] == "vllm" and meta["judge"]["prompts_judged"] == 2
    assert alpaca["win_rate"]["n"] == 2 and 0 < alpaca["win_rate"]["value"] < 100
    assert vllm_engine.llm is llm
