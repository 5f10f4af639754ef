"""``selectbench scar train`` and ``selectbench scar build-data``: thin wrappers over the SCAR library functions."""

from __future__ import annotations

import argparse
from typing import Any

from selectbench.errors import SelectbenchError

BUNDLED = "selectbench/data/demo/scar_train.jsonl"


def add_parser(subparsers: Any) -> None:
    """Add ``scar`` with its ``train`` and ``build-data`` subcommands."""
    scar = subparsers.add_parser("scar", help="SCAR style ranker: train it, or build its training data")
    sub = scar.add_subparsers(dest="scar_command", required=True, metavar="SCAR_COMMAND")

    train = sub.add_parser(
        "train",
        help="train a style ranker on (instruction, human, referenced, direct) quadruples",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_config_help(),
    )
    train.add_argument(
        "--data", help=f"quadruples (.jsonl or .json list) in the format of {BUNDLED} (default: that bundled file)"
    )
    train.add_argument("--encoder", help="encoder model spec (default: minilm-l6); same as --set encoder=MODEL")
    train.add_argument("--out", required=True, help="output checkpoint folder (config.json, pytorch_model.bin, ...)")
    train.add_argument("--set", action="append", metavar="KEY=VALUE", help="training config value (repeatable)")
    train.set_defaults(func=cmd_train)

    build = sub.add_parser(
        "build-data",
        help="generate referenced/direct answers and 0-9 ratings for (instruction, human answer) pairs",
    )
    build.add_argument(
        "--pairs", required=True, help="pairs as a pool: a .jsonl/.json/.parquet/.csv file, HF id, demo"
    )
    build.add_argument(
        "--model", required=True, help="model that writes the answers (and rates, unless --judge-model)"
    )
    build.add_argument("--out", required=True, help="output quadruples .jsonl (sidecars: .raw.jsonl, .meta.json)")
    build.add_argument("--engine", default="auto", choices=("auto", "hf", "vllm", "openai"), help="generation engine")
    build.add_argument("--judge-model", help="a different model for the ratings (same engine)")
    build.add_argument("--base-url", help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 (engine openai)")
    build.add_argument(
        "--api-key-env",
        help="name of the environment variable holding the API key (engine openai; 'none' for no key). The key "
        "itself is never written anywhere",
    )
    build.add_argument("--max-new-tokens", type=int, default=1024, help="tokens per generated answer (default 1024)")
    build.add_argument("--judge-max-new-tokens", type=int, default=1024, help="tokens per judge reply (default 1024)")
    build.add_argument("--limit", type=int, help="only the first N pairs")
    build.add_argument("--option", action="append", metavar="KEY=VALUE", help="engine option (repeatable)")
    build.set_defaults(func=cmd_build_data)


def _config_help() -> str:
    from selectbench.config import describe_fields
    from selectbench.selectors.scar.config import ScarTrainConfig

    rows = [(f"{name}={default}", text) for name, default, text in describe_fields(ScarTrainConfig)]
    width = max(len(key) for key, _ in rows)
    return "training config (--set KEY=VALUE):\n" + "\n".join(f"  {key:<{width}}  {text}" for key, text in rows)


def cmd_train(args: argparse.Namespace) -> int:
    """``selectbench scar train``."""
    from selectbench.config import parse_assignments
    from selectbench.selectors.scar.config import ScarTrainConfig
    from selectbench.selectors.scar.selector import BUNDLED_DATA
    from selectbench.selectors.scar.train import train_ranker

    values = parse_assignments(args.set, "--set")
    if args.encoder:
        if "encoder" in values and values["encoder"] != args.encoder:
            raise SelectbenchError(f"--encoder {args.encoder} and --set encoder={values['encoder']} disagree")
        values["encoder"] = args.encoder
    config = ScarTrainConfig.from_dict(values)
    data = args.data or str(BUNDLED_DATA)
    meta = train_ranker(data, args.out, config)
    print(
        f"trained a SCAR ranker on {meta['data']['n']} quadruples: best epoch {meta['best_epoch']}, validation "
        f"pairwise accuracy {meta['val_accuracy']:.3f}, test {meta['test_accuracy']:.3f} -> {args.out}"
    )
    return 0


def cmd_build_data(args: argparse.Namespace) -> int:
    """``selectbench scar build-data``."""
    from selectbench.config import parse_assignments
    from selectbench.selectors.scar.data import build_data

    options = parse_assignments(args.option, "--option")
    for flag, key in ((args.base_url, "base_url"), (args.api_key_env, "api_key_env")):
        if flag is not None:
            if args.engine != "openai":
                raise SelectbenchError(f"--{key.replace('_', '-')} only applies to --engine openai")
            options[key] = flag
    if args.limit is not None and args.limit < 1:
        raise SelectbenchError(f"--limit must be at least 1, got {args.limit}")
    meta = build_data(
        args.pairs,
        args.out,
        engine=args.engine,
        model=args.model,
        judge_model=args.judge_model,
        options=options,
        max_new_tokens=args.max_new_tokens,
        judge_max_new_tokens=args.judge_max_new_tokens,
        limit=args.limit,
    )
    missing = sum(meta["missing_ratings"].values())
    print(
        f"built {meta['pairs']['n']} quadruples -> {args.out} ({missing} of {6 * meta['pairs']['n']} ratings could "
        "not be parsed and are null)"
    )
    return 0
