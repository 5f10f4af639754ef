"""``alpacaeval``: the model's answers judged pairwise against reference answers through the ``alpaca-eval`` library
(its ``PairwiseAnnotator``, prompt templates, parsers, annotation cache and win-rate metrics), with a judge that is
either a local model (read from its next-token distribution) or an OpenAI-compatible endpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selectbench.errors import SelectbenchError
from selectbench.evaluate.benchmarks import DEMO_EVAL_SET, AlpacaEvalParams, Context, Outcome, metric
from selectbench.io import write_json
from selectbench.models.engines.base import NextTokenScorer

JUDGE_DIR = "judge"
# The AlpacaEval 2 annotator: the judge names the better of two outputs with one token ("m" or "M"), and the
# preference is the probability it gives the first one (weighted win rate).
DEFAULT_ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"
CLF_TEMPLATE = "alpaca_eval_clf_gpt4_turbo/alpaca_eval_clf.txt"
OFFICIAL_SET_SIZE = 805


def instruction_file(spec: str) -> str:
    """``demo`` -> the demo corpus's ``open_eval.jsonl``; anything else is a file (JSON list or JSONL)."""
    return str(DEMO_EVAL_SET) if spec == "demo" else spec


def _import_alpaca_eval() -> Any:
    # alpaca_eval sets the root logger to INFO when imported (annotators/base.py); keep the caller's level.
    root = logging.getLogger()
    level = root.level
    import alpaca_eval
    import alpaca_eval.annotators  # (the import with the side effect)
    import alpaca_eval.metrics

    root.setLevel(level)
    return alpaca_eval


@contextlib.contextmanager
def library_log(path: Path) -> Iterator[None]:
    """Send alpaca-eval's logging (it logs through the root logger) to ``path`` while it runs, not to the console."""
    root = logging.getLogger()
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()


def env_key_openai_client(*, api_key_env: str, **kwargs: Any) -> Any:
    """An ``openai.OpenAI`` client whose key is read from environment variable ``api_key_env`` when the client is
    made. alpaca-eval builds its clients from a YAML file; naming this function there (``client_class``) keeps the
    key itself out of every file and log."""
    import openai

    from selectbench.models.engines.openai import api_key_from_env

    return openai.OpenAI(api_key=api_key_from_env(api_key_env), **kwargs)


def library_annotator_config(name: str) -> dict[str, Any]:
    """The single annotator config that alpaca-eval ships under ``name``."""
    import yaml

    alpaca_eval = _import_alpaca_eval()
    folder = Path(alpaca_eval.constants.EVALUATORS_CONFIG_DIR)
    path = folder / name / "configs.yaml"
    if not path.is_file():
        shipped = sorted(p.name for p in folder.iterdir() if (p / "configs.yaml").is_file())
        raise SelectbenchError(f"alpaca-eval has no annotator config {name!r}; it ships: {', '.join(shipped)}")
    configs = yaml.safe_load(path.read_text())
    if len(configs) != 1:
        raise SelectbenchError(f"alpaca-eval annotator config {name!r} is a pool of {len(configs)} annotators")
    return dict(next(iter(configs.values())))


def _template_text(relpath: str) -> str:
    alpaca_eval = _import_alpaca_eval()
    return (Path(alpaca_eval.constants.EVALUATORS_CONFIG_DIR) / relpath).read_text()


@dataclass
class LocalJudgeCompletions:
    """An alpaca-eval completion function backed by a local model (an hf or vllm engine: a
    :class:`~selectbench.models.engines.base.NextTokenScorer`).

    For each judge prompt (alpaca-eval's ChatML-style text) it renders the conversation with the judge's own chat
    template and reads the log-probabilities of the two output identifiers as the first token of its answer; it
    returns them in the shape of an OpenAI ``top_logprobs`` reply, so alpaca-eval's ``logprob_parser`` turns them
    into the AlpacaEval 2 weighted preference, exactly as for an API judge that returns log-probabilities.
    """

    generator: NextTokenScorer
    labels: tuple[str, str] = ("m", "M")
    prompts_seen: int = field(default=0, init=False)

    def label_ids(self) -> list[int]:
        """One token id per identifier (an identifier the judge's tokenizer splits is an error)."""
        ids = []
        for label in self.labels:
            tokens = self.generator.tokenizer(label, add_special_tokens=False)["input_ids"]
            if len(tokens) != 1:
                raise SelectbenchError(
                    f"the judge's tokenizer splits the identifier {label!r} into {len(tokens)} tokens; a local judge "
                    "needs single-token identifiers"
                )
            ids.append(int(tokens[0]))
        return ids

    def __call__(self, prompts: Sequence[str], **_: Any) -> dict[str, list[Any]]:
        """alpaca-eval's completion-function interface: ``completions_all`` carries the log-probabilities."""
        from alpaca_eval.utils import prompt_to_chatml

        start = time.perf_counter()
        conversations = [[{"role": m["role"], "content": m["content"]} for m in prompt_to_chatml(p)] for p in prompts]
        logprobs = self.generator.next_token_logprobs(conversations, self.label_ids())
        self.prompts_seen += len(prompts)
        each = (time.perf_counter() - start) / max(1, len(prompts))
        completions_all, texts = [], []
        for values in logprobs:
            top = [{"token": label, "logprob": float(lp)} for label, lp in zip(self.labels, values, strict=True)]
            best = max(top, key=lambda t: t["logprob"])
            texts.append(best["token"])
            completions_all.append(
                {"text": best["token"], "logprobs": {"content": [{**best, "top_logprobs": top}]}, "total_tokens": 0}
            )
        return {
            "completions": texts,
            "completions_all": completions_all,
            "price_per_example": [0.0] * len(prompts),
            "time_per_example": [each] * len(prompts),
        }


@dataclass
class Judge:
    """A configured judge: what goes into the alpaca-eval annotator config, and what is recorded in meta.json."""

    kind: str
    model: str
    config: dict[str, Any]
    annotator_kwargs: dict[str, Any]
    record: dict[str, Any]
    close: Any = None

    @property
    def name(self) -> str:
        """The annotator's name: it keys alpaca-eval's annotation cache, so it changes with the judge."""
        digest = hashlib.sha256(json.dumps(self.record, sort_keys=True).encode()).hexdigest()[:10]
        return f"selectbench_{self.kind}_{digest}"


def make_judge(params: AlpacaEvalParams, judge_dir: Path, generator: Any = None) -> Judge:
    """Build the judge the options describe; writes its prompt template (and client config) into ``judge_dir``.

    Args:
        params: the benchmark options (``judge``, ``judge_model``, ...).
        judge_dir: the run's judge folder (prompt template, client config, annotation cache, log).
        generator: a local judge engine to use instead of building one (e.g. one already loaded).
    """
    judge_dir.mkdir(parents=True, exist_ok=True)
    if params.judge == "local":
        if params.annotator is not None:
            raise SelectbenchError(
                "alpacaeval: annotator= applies to judge=openai; a local judge always reads the m/M identifier "
                "probabilities (the AlpacaEval 2 weighted annotator)"
            )
        prompt = judge_dir / "prompt.txt"
        prompt.write_text(_template_text(CLF_TEMPLATE), encoding="utf-8")
        own = None
        if generator is None:
            from selectbench.models.engines.factory import make_engine

            if params.judge_engine == "openai":
                raise SelectbenchError(
                    "alpacaeval: judge_engine must be auto, hf or vllm (for an endpoint: judge=openai)"
                )
            generator = own = make_engine(
                params.judge_engine, params.judge_model, allowed=("auto", "hf", "vllm"), progress=False
            )
        completions = LocalJudgeCompletions(generator)
        config = {
            "prompt_template": str(prompt),
            "fn_completion_parser": "logprob_parser",
            "completion_parser_kwargs": {
                "numerator_token": "m",
                "denominator_tokens": ["m", "M"],
                "is_binarize": False,
            },
            "completion_key": "completions_all",
            "batch_size": 1,
        }
        record = {
            "kind": "local",
            "model": params.judge_model,
            "fingerprint": generator.fingerprint,
            "engine": generator.name,
            "prompt_template": CLF_TEMPLATE,
            "preference": "P(m) / (P(m) + P(M)) from the judge's next-token distribution (logprob_parser)",
        }
        return Judge(
            "local", params.judge_model, config, {"fn_completions": completions}, record, own.close if own else None
        )
    if params.judge != "openai":
        raise SelectbenchError(f"alpacaeval: judge must be 'local' or 'openai', got {params.judge!r}")
    from selectbench.models.engines.openai import api_key_from_env

    api_key_from_env(params.judge_api_key_env)  # fail now, not after generating
    annotator = params.annotator or DEFAULT_ANNOTATOR
    config = library_annotator_config(annotator)
    prompt = judge_dir / "prompt.txt"
    prompt.write_text(_template_text(config["prompt_template"]), encoding="utf-8")
    clients = judge_dir / "openai_clients.yaml"
    client: dict[str, Any] = {
        "client_class": "selectbench.evaluate.alpacaeval.env_key_openai_client",
        "api_key_env": params.judge_api_key_env,
    }
    if params.judge_url:
        client["base_url"] = params.judge_url
    import yaml

    clients.write_text(yaml.safe_dump({"default": [client]}), encoding="utf-8")
    kwargs = {k: v for k, v in dict(config.get("completions_kwargs") or {}).items() if k != "client_kwargs"}
    # Chat format whatever the model is called (alpaca-eval guesses from OpenAI model names otherwise).
    kwargs.update(model_name=params.judge_model, requires_chatml=True, client_config_path=str(clients))
    config.update(prompt_template=str(prompt), fn_completions="openai_completions", completions_kwargs=kwargs)
    config.pop("pretty_name", None)
    config.pop("link", None)
    record = {
        "kind": "openai",
        "model": params.judge_model,
        "base_url": params.judge_url,
        "api_key_env": params.judge_api_key_env,
        "annotator": annotator,
    }
    return Judge("openai", params.judge_model, config, {}, record)


def length_controlled_applicable(n: int, limit: int | None, records: Sequence[dict[str, Any]]) -> str | None:
    """None where the library's length-controlled GLM applies, else the reason it does not.

    The GLM looks up each instruction's difficulty by its position in the official 805-instruction AlpacaEval set
    and is regularised toward annotations of that set (``df_gamed.csv``, fetched from the Hugging Face hub), so it
    only means something on that whole set, in its original order.
    """
    if limit is not None and limit < OFFICIAL_SET_SIZE:
        return f"--limit {limit}: the length-controlled GLM needs the whole official {OFFICIAL_SET_SIZE}-item set"
    if n != OFFICIAL_SET_SIZE or not all("dataset" in r.get("meta", {}) for r in records):
        return (
            f"the instruction set has {n} items; the length-controlled GLM looks up instruction difficulty by "
            f"position in the official {OFFICIAL_SET_SIZE}-instruction AlpacaEval set (pass it with "
            "--param instructions=alpaca_eval.json)"
        )
    return None


def run_alpacaeval(ctx: Context, judge_generator: Any = None) -> Outcome:
    """Generate answers, judge them against the references through ``alpaca_eval.evaluate``, and summarise.

    Summary (percent, as alpaca-eval reports): ``win_rate`` (mean preference for the model; soft for weighted
    annotators), ``discrete_win_rate`` (wins count 1, draws 1/2) and, where its assumptions hold,
    ``length_controlled_win_rate``. The judge's prompt, client config, annotation cache, the library's
    ``annotations.json``/``leaderboard.csv`` and its log stay in ``<out>/judge/``.
    """
    from selectbench.data import load_pool
    from selectbench.evaluate.benchmarks import write_generations
    from selectbench.models.chat import record_messages, user_turn

    params: AlpacaEvalParams = ctx.params
    if params.length_controlled not in ("auto", "off"):
        raise SelectbenchError(f"alpacaeval: length_controlled must be auto or off, got {params.length_controlled!r}")
    source = instruction_file(params.instructions)
    pool = load_pool(source)
    n = len(pool) if ctx.limit is None else min(ctx.limit, len(pool))
    records = pool.records(list(range(n)))
    judge_dir = ctx.out_dir / JUDGE_DIR
    shared = ctx.shared_generator
    if judge_generator is None and params.judge == "local" and shared is not None and shared.name != "openai":
        from selectbench.models.spec import resolve_model

        if resolve_model(params.judge_model).fingerprint == shared.fingerprint:
            judge_generator = shared  # the judge is the model this engine already serves: no second engine
    judge = make_judge(params, judge_dir, judge_generator)
    try:
        completions = ctx.generate([record_messages(r, with_response=False) for r in records], params)
        write_generations(ctx, [r["id"] for r in records], completions)
        model_name = ctx.model if ctx.adapter is None else f"{ctx.model}+{Path(ctx.adapter).name}"
        if model_name == params.reference_name:
            model_name += " (evaluated)"
        instructions = [user_turn(r) for r in records]
        outputs = [texts[0] for texts in completions]
        references = [r["response"] for r in records]
        model_rows = [
            {"instruction": i, "output": o, "generator": model_name}
            for i, o in zip(instructions, outputs, strict=True)
        ]
        reference_rows = [
            {"instruction": i, "output": o, "generator": params.reference_name}
            for i, o in zip(instructions, references, strict=True)
        ]
        config_path = judge_dir / "configs.yaml"
        import yaml

        config_path.write_text(yaml.safe_dump({judge.name: judge.config}, sort_keys=False), encoding="utf-8")
        alpaca_eval = _import_alpaca_eval()
        start = time.perf_counter()
        with library_log(judge_dir / "alpaca_eval.log"):
            leaderboard, annotations = alpaca_eval.evaluate(
                model_outputs=model_rows,
                reference_outputs=reference_rows,
                annotators_config=str(config_path),
                name=model_name,
                output_path=str(judge_dir),
                precomputed_leaderboard=None,
                is_return_instead_of_print=True,
                fn_metric="get_winrate",
                sort_by="win_rate",
                is_cache_leaderboard=False,
                annotation_kwargs={"is_ordered": True},
                caching_path=str(judge_dir / "annotations_cache.json"),
                **judge.annotator_kwargs,
            )
        judging_s = time.perf_counter() - start
    finally:
        if judge.close is not None:
            judge.close()
    board = leaderboard.loc[model_name].to_dict()
    import pandas as pd
    from alpaca_eval.metrics.helpers import ZeroOneScoringRule

    frame = pd.DataFrame(annotations)
    preferences = frame["preference"]
    valid = preferences.notna()
    discrete = ZeroOneScoringRule().describe_head2head(preferences[valid])
    n_total = int(board["n_total"])
    summary = {
        "win_rate": metric(board["win_rate"], board["standard_error"], n_total),
        "discrete_win_rate": metric(discrete["win_rate"], discrete["standard_error"], n_total),
    }
    notes: list[str] = []
    absent: dict[str, str] = {}
    if params.length_controlled == "off":
        absent["length_controlled_win_rate"] = "turned off (length_controlled=off)"
    else:
        reason = length_controlled_applicable(n, ctx.limit, records)
        if reason is None:
            try:
                with library_log(judge_dir / "alpaca_eval.log"):
                    lc = alpaca_eval.metrics.get_length_controlled_winrate(frame, save_weights_dir=None)
                summary["length_controlled_win_rate"] = metric(
                    lc["length_controlled_winrate"], lc["lc_standard_error"], n_total
                )
            except Exception as err:  # the GLM needs df_gamed.csv from the hub; offline, report why it is absent
                reason = f"alpaca-eval's length-controlled GLM failed: {type(err).__name__}: {err}"
        if reason is not None:
            absent["length_controlled_win_rate"] = reason
    for name, why in absent.items():
        notes.append(f"{name} absent: {why}")
    lookup = {(a["instruction"], a["output_1"], a["output_2"]): a.get("preference") for a in frame.to_dict("records")}
    rows = []
    for record, instruction, output, reference in zip(records, instructions, outputs, references, strict=True):
        preference = lookup.get((instruction, reference, output))
        preference = None if preference is None or preference != preference else float(preference)
        rows.append(
            {
                "id": record["id"],
                "instruction": instruction,
                "output": output,
                "reference": reference,
                "preference": preference,
                "win": None if preference is None else preference - 1.0,
            }
        )
    missing = sum(r["preference"] is None for r in rows)
    if missing:
        notes.append(f"{missing} of {n} items got no parsable verdict from the judge and are left out of the rates")
    judge_meta = {
        **judge.record,
        "annotator_name": judge.name,
        "annotations_cache": str(judge_dir / "annotations_cache.json"),
        "prompts_judged": getattr(judge.annotator_kwargs.get("fn_completions"), "prompts_seen", None),
        "judging_s": round(judging_s, 3),
    }
    write_json(judge_dir / "judge.json", judge_meta)
    meta = {
        "alpacaeval": {
            "instructions": source,
            "pool_fingerprint": pool.fingerprint,
            "items": n,
            "model_name": model_name,
            "reference_name": params.reference_name,
            "avg_length": board.get("avg_length"),
            "n_wins": int(board["n_wins"]),
            "n_wins_base": int(board["n_wins_base"]),
            "n_draws": int(board["n_draws"]),
            "missing_verdicts": missing,
        },
        "judge": judge_meta,
        "absent_metrics": absent,
    }
    return Outcome(rows=rows, summary=summary, meta=meta, notes=notes)
