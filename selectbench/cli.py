"""The ``selectbench`` command line: thin wrappers over the library functions of each stage."""

from __future__ import annotations

import argparse
import importlib
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

from selectbench import __version__
from selectbench.config import parse_assignments
from selectbench.errors import SelectbenchError

# Subcommands that live beside their stage: each module has ``add_parser(subparsers)``, which adds the
# subcommand and sets ``func`` (called with the parsed args, returns the exit status).
STAGE_COMMANDS: tuple[str, ...] = (
    "selectbench.reports.cli",
    "selectbench.evaluate.cli",
    "selectbench.finetune.cli",
    "selectbench.selectors.scar.cli",
)


def _add_pool_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pool", required=True, help="a .jsonl/.json/.parquet/.csv file, a HF dataset id, or 'demo'")
    parser.add_argument("--columns", help="column mapping, e.g. instruction=question,response=answer[,input=..,id=..]")
    parser.add_argument(
        "--on-invalid",
        choices=("error", "skip"),
        default="error",
        help="stop at the first bad row (default) or drop bad rows and report them",
    )


def _add_selector_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--selector", required=True, help="a registered selector (see `selectbench ls selectors`)")
    parser.add_argument("--param", action="append", metavar="KEY=VALUE", help="selector hyperparameter (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(prog="selectbench", description=__doc__)
    parser.add_argument("--version", action="version", version=f"selectbench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run an experiment; with no config, the embedded demo")
    run.add_argument("config", nargs="?", help="experiment YAML (default: the embedded demo)")
    run.add_argument("--set", action="append", metavar="KEY.PATH=VALUE", help="override a config value (repeatable)")
    run.add_argument("--out", help="output folder (default: the config's `out`, else runs/<name>)")
    run.add_argument("--quick", action="store_true", help="the quick demo preset (no config only; ~3 minutes)")
    run.add_argument("--dry-run", action="store_true", help="print the plan and its cost estimate; run nothing")
    run.set_defaults(func=cmd_run)

    validate = sub.add_parser("validate", help="check an experiment YAML; every problem is reported at once")
    validate.add_argument("config", help="experiment YAML")
    validate.add_argument("--set", action="append", metavar="KEY.PATH=VALUE", help="override a config value")
    validate.set_defaults(func=cmd_validate)

    select = sub.add_parser("select", help="select a subset of a pool and write selection.jsonl + meta.json")
    _add_pool_args(select)
    _add_selector_args(select)
    select.add_argument("--budget", required=True, help="a count (50) or a fraction of the pool in (0, 1] (0.1)")
    select.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    select.add_argument("--out", required=True, help="output folder")
    select.set_defaults(func=cmd_select)

    score = sub.add_parser("score", help="score every record of a pool; one JSON line per record, in pool order")
    _add_pool_args(score)
    _add_selector_args(score)
    score.add_argument("--out", required=True, help="output .jsonl file")
    score.set_defaults(func=cmd_score)

    ls = sub.add_parser("ls", help="list what is available")
    ls.add_argument("what", nargs="?", choices=tuple(LISTINGS), default="selectors")
    ls.set_defaults(func=cmd_ls)

    for module in STAGE_COMMANDS:
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run a subcommand; user errors print one message and return 2."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SelectbenchError as err:
        print(f"selectbench: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("selectbench: interrupted", file=sys.stderr)
        return 130


def _load(args: argparse.Namespace) -> Any:
    from selectbench.data import load_pool

    pool = load_pool(args.pool, columns=args.columns, on_invalid=args.on_invalid)
    if pool.report.skipped:
        print(f"pool {args.pool}: {pool.report.summary()}", file=sys.stderr)
    return pool


def cmd_select(args: argparse.Namespace) -> int:
    """``selectbench select``."""
    from selectbench.selectors import make_selector, parse_budget, resolve_budget
    from selectbench.selectors.artifacts import write_selection

    budget = parse_budget(args.budget)
    selector = make_selector(args.selector, **parse_assignments(args.param))
    start = time.perf_counter()
    pool = _load(args)
    loaded = time.perf_counter() - start
    resolve_budget(budget, len(pool))
    selection = selector.select(pool, budget, seed=args.seed)
    selection.timings["load"] = loaded
    out = write_selection(args.out, pool, selection)
    print(f"selected {len(selection.indices)} of {len(pool)} records with {args.selector} -> {out}/selection.jsonl")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    """``selectbench score``."""
    import numpy as np

    from selectbench.io import atomic_open, dumps
    from selectbench.selectors import ScoreSelector, available, make_selector

    selector = make_selector(args.selector, **parse_assignments(args.param))
    if not isinstance(selector, ScoreSelector):
        scorers = [name for name, cls in available().items() if issubclass(cls, ScoreSelector)]
        raise SelectbenchError(
            f"selector {args.selector!r} does not score records; scoring selectors: {', '.join(scorers)}"
        )
    pool = _load(args)
    fields = {name: np.asarray(values) for name, values in selector.score_fields(pool).items()}
    ids = pool.ids
    with atomic_open(args.out) as handle:
        for i, record_id in enumerate(ids):
            line: dict[str, Any] = {"id": record_id}
            for name, values in fields.items():
                value = values[i].item() if hasattr(values[i], "item") else values[i]
                line[name] = None if isinstance(value, float) and math.isnan(value) else value
            handle.write(dumps(line) + "\n")
    print(f"scored {len(ids)} records with {args.selector} -> {args.out}")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    """``selectbench ls``."""
    rows = LISTINGS[args.what]()
    width = max(len(row[0]) for row in rows)
    for name, text in rows:
        print(f"{name:<{width}}  {text}")
    return 0


def _list_selectors() -> list[tuple[str, str]]:
    from selectbench.selectors.lookup import available
    from selectbench.selectors.registry import ORIGIN, describe

    rows = []
    for name, cls in available().items():
        origin = ORIGIN.get(name, "")
        rows.append((name, describe(cls) + ("" if origin == "selectbench" else f"  [plug-in: {origin}]")))
    return rows


def _list_models() -> list[tuple[str, str]]:
    from selectbench.models.spec import alias_table

    return [
        (row["name"], f"installed: {row['installed']:<3}  {row['description']}  ({row['where']})")
        for row in alias_table()
    ]


# `selectbench ls WHAT`: each entry returns (name, description) rows. Stages add theirs here.
LISTINGS = {"selectors": _list_selectors, "models": _list_models}
LISTINGS["benchmarks"] = lambda: importlib.import_module("selectbench.evaluate.benchmarks").list_benchmarks()


def cmd_run(args: argparse.Namespace) -> int:
    """``selectbench run [CONFIG]``: the whole grid, resumable; with no config, the embedded demo."""
    from selectbench.experiment.config import load_config
    from selectbench.experiment.presets import QUICK_PATH
    from selectbench.experiment.run import run_experiment

    if args.quick and args.config:
        raise SelectbenchError("--quick is the quick demo preset; it does not combine with a config file")
    overrides = list(args.set or [])
    if args.out:
        overrides.append(f"out={args.out}")
    config = load_config(QUICK_PATH if args.quick else args.config, overrides)
    run_experiment(config, dry_run=args.dry_run)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """``selectbench validate CONFIG``: load strictly and report."""
    from selectbench.experiment.config import load_config
    from selectbench.experiment.plan import plan

    config = load_config(args.config, list(args.set or []))
    grid = plan(config, config.pool.limit or 10**9)
    print(f"{args.config}: valid; {len(grid)} runs, benchmarks {', '.join(config.evaluate.benchmarks)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
