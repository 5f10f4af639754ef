"""``selectbench finetune``: fine-tune a model on one subset with the shared recipe."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path
from typing import Any


def config_help() -> str:
    """The config keys, defaults and meanings, for ``--help``."""
    import json

    from selectbench.config import describe_fields
    from selectbench.finetune.config import FinetuneConfig

    rows = describe_fields(FinetuneConfig)
    width = max(len(name) for name, _, _ in rows)
    lines = ["recipe keys for --set (default in brackets):"]
    for name, default, text in rows:
        body = textwrap.wrap(f"[{json.dumps(default)}] {text}", width=110 - width)
        lines.append(f"  {name:<{width}}  {body[0]}")
        lines.extend(f"  {'':<{width}}  {more}" for more in body[1:])
    return "\n".join(lines)


def add_parser(subparsers: Any) -> None:
    """Add ``selectbench finetune``."""
    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune a model on a subset with the shared recipe (LoRA by default)",
        description="Fine-tune MODEL on a subset with the one recipe (TRL SFT, chat template, loss on responses). "
        "Writes the adapter (or checkpoint), meta.json and DONE to --out. Multi-GPU: "
        "accelerate launch -m selectbench finetune ...",
        epilog=config_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--subset", required=True, help="a selection folder (from `selectbench select`) or a pool file"
    )
    parser.add_argument("--model", required=True, help="model spec: alias, local folder, .gguf file or HF id")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", dest="sets", help="recipe key (repeatable)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--force", action="store_true", help="replace a finished run in --out with a different recipe")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=cmd_finetune)


def cmd_finetune(args: argparse.Namespace) -> int:
    """``selectbench finetune``."""
    import os

    from selectbench.config import parse_assignments
    from selectbench.finetune.config import FinetuneConfig
    from selectbench.finetune.recipe import finetune

    config = FinetuneConfig.from_overrides(parse_assignments(args.sets, "--set"))
    # Quiet the library chatter (dataset maps, tokenizer notes); selectbench prints its own notes and bar.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import transformers

    transformers.logging.set_verbosity_error()
    finetune(args.subset, args.model, config, Path(args.out), progress=not args.no_progress, force=args.force)
    return 0
