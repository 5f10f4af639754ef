"""Train a SCAR style ranker on (instruction, human, referenced, direct) quadruples, exactly as ALGORITHMS.md.

Ranking loss on quality-filtered pairs plus the weighted triplet representation loss; AdamW with linear warmup,
gradient clipping, an 80/10/10 split (seed 42), and the epoch with the best validation pairwise accuracy kept.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from selectbench.errors import InputError, SelectbenchError
from selectbench.selectors.scar.config import ASPECTS, SCORE_TYPES, ScarTrainConfig

KINDS = ("human", "referenced", "direct")
# The three orderings the ranking loss enforces, as (preferred, other): direct > referenced > human.
PAIRS = (("direct", "referenced"), ("referenced", "human"), ("direct", "human"))


# ---------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Quadruple:
    """One training row: an instruction, its three answers, and their 0-9 ratings (None = missing)."""

    id: str
    instruction: str
    answers: dict[str, str]  # kind -> answer text
    ratings: dict[str, dict[str, float | None]] | None  # kind -> aspect -> rating


def load_quadruples(path: str | os.PathLike[str]) -> list[Quadruple]:
    """Read quadruples from JSON Lines (or a JSON list) in the format of ``selectbench/data/demo/scar_train.jsonl``.

    Each row: ``instruction``, ``human``, ``referenced``, ``direct`` (strings), optional ``id``, and ``ratings``
    (``{kind: {"helpfulness": 0-9 or null, "correctness": 0-9 or null}}``; null means the judge's rating could
    not be parsed). Other keys (``domain``, ...) are ignored.

    Raises:
        InputError: naming the file, the line and the field of the first bad row.
    """
    path = Path(path)
    source = str(path)
    if not path.exists():
        raise SelectbenchError(f"scar training data {source}: no such file")
    text = path.read_text(encoding="utf-8")
    rows: list[tuple[str, Any]] = []
    if text.lstrip().startswith("["):
        try:
            rows = [(f"item {i}", row) for i, row in enumerate(json.loads(text))]
        except json.JSONDecodeError as err:
            raise InputError(source, None, None, f"invalid JSON: {err}") from None
    else:
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append((f"line {number}", json.loads(line)))
            except json.JSONDecodeError as err:
                raise InputError(source, f"line {number}", None, f"invalid JSON: {err.msg}") from None
    out = [_quadruple(source, where, row, i) for i, (where, row) in enumerate(rows)]
    if not out:
        raise InputError(source, None, None, "no quadruples in the file")
    return out


def _quadruple(source: str, where: str, row: Any, index: int) -> Quadruple:
    hint = "expected the quadruple format of selectbench/data/demo/scar_train.jsonl (see `selectbench scar train -h`)"
    if not isinstance(row, dict):
        raise InputError(source, where, None, f"expected an object, got {type(row).__name__}", hint)
    for key in ("instruction", *KINDS):
        if not isinstance(row.get(key), str):
            raise InputError(source, where, key, f"expected a string, got {row.get(key)!r:.60}", hint)
    if not row["instruction"].strip():
        raise InputError(source, where, "instruction", "is empty")
    ratings = row.get("ratings")
    parsed: dict[str, dict[str, float | None]] | None = None
    if ratings is not None:
        if not isinstance(ratings, dict):
            raise InputError(source, where, "ratings", f"expected an object, got {ratings!r:.60}", hint)
        parsed = {}
        for kind in KINDS:
            entry = ratings.get(kind)
            if not isinstance(entry, dict):
                raise InputError(source, where, f"ratings.{kind}", f"expected an object, got {entry!r:.60}", hint)
            parsed[kind] = {}
            for aspect in ASPECTS:
                value = entry.get(aspect)
                ok = value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))
                if not ok or (value is not None and not 0 <= value <= 9):
                    raise InputError(
                        source, where, f"ratings.{kind}.{aspect}", f"expected a number 0-9 or null, got {value!r}"
                    )
                parsed[kind][aspect] = None if value is None else float(value)
    return Quadruple(
        id=str(row.get("id", index)),
        instruction=row["instruction"],
        answers={kind: row[kind] for kind in KINDS},
        ratings=parsed,
    )


def quality(q: Quadruple, kind: str, score_type: str) -> float | None:
    """The quality the pair filter uses: the mean of the chosen aspects, or None if any is missing."""
    if q.ratings is None:
        return None
    values = [q.ratings[kind][a] for a in SCORE_TYPES[score_type]]
    if any(v is None for v in values):
        return None
    return sum(values) / len(values)  # type: ignore[arg-type]


def pair_passes(q: Quadruple, a: str, b: str, config: ScarTrainConfig) -> bool:
    """Whether the pair (a, b) of this row enters its ranking term: the answers differ and their qualities meet
    the constraint (default ``abs``: both strictly between ``constraint_min`` and ``constraint_max``).

    A missing rating fails every constraint except ``none`` (the reference stores a failed parse as 0, which
    fails them too).
    """
    if q.answers[a] == q.answers[b]:
        return False
    mode, low, high = config.constraint_mode, config.constraint_min, config.constraint_max
    if mode == "none":
        return True
    s1, s2 = quality(q, a, config.score_type), quality(q, b, config.score_type)
    if s1 is None or s2 is None:
        return False
    if mode == "abs":
        return min(s1, s2) > low and max(s1, s2) < high
    if mode == "abs_pos":
        return low < s1 < high
    if mode == "diff":
        return abs(s1 - s2) < high
    return abs(s1 - s2) < high and min(s1, s2) > low  # abs_diff


def pair_masks(rows: list[Quadruple], config: ScarTrainConfig) -> dict[tuple[str, str], np.ndarray]:
    """For each ordering (a, b) in PAIRS, which rows pass the pair filter."""
    if config.constraint_mode != "none":
        unrated = [q.id for q in rows if q.ratings is None]
        if unrated:
            raise SelectbenchError(
                f"{len(unrated)} quadruple(s) have no ratings (first: {unrated[0]}); the pair filter "
                f"(constraint_mode={config.constraint_mode}) needs them. Rate them with `selectbench scar "
                "build-data`, or train with --set constraint_mode=none"
            )
    return {(a, b): np.array([pair_passes(q, a, b, config) for q in rows], dtype=bool) for a, b in PAIRS}


def split_rows(n: int, holdout_fraction: float = 0.2, seed: int = 42) -> tuple[list[int], list[int], list[int]]:
    """``(train, val, test)`` indices, as the reference splits: scikit-learn's ``train_test_split(test_size=0.2,
    random_state=42)``, then the held-out part split 50/50 with the same seed, its first half test, second val.

    Reproduced with ``numpy.random.RandomState`` exactly as scikit-learn's ``ShuffleSplit`` draws it (the test
    suite checks the equality where scikit-learn is installed), so scikit-learn is not a dependency.
    """

    def split(items: list[int], test_size: float) -> tuple[list[int], list[int]]:
        n_test = math.ceil(test_size * len(items))
        perm = np.random.RandomState(seed).permutation(len(items))
        return [items[i] for i in perm[n_test:]], [items[i] for i in perm[:n_test]]

    train, holdout = split(list(range(n)), holdout_fraction)
    test, val = split(holdout, 0.5)
    return train, val, test


def pairwise_accuracy(scores: dict[str, np.ndarray]) -> float:
    """``[#(s_d > s_r) + #(s_d > s_h) + #(s_r > s_h)] / 3N`` over all rows (no quality filter)."""
    n = len(scores["human"])
    if n == 0:
        return float("nan")
    wins = sum(int((scores[a] > scores[b]).sum()) for a, b in PAIRS)
    return wins / (3 * n)


def data_fingerprint(path: str | os.PathLike[str]) -> str:
    """sha256 of the training file's bytes (first 16 hex digits)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- training


def train_ranker(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    config: ScarTrainConfig | None = None,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a ranker on the quadruples in ``data`` and write it to ``out``; return the meta written.

    ``out`` gets the checkpoint (``config.json``, ``pytorch_model.bin``, tokenizer files), then ``meta.json``
    (config, split sizes, filter counts, per-epoch validation accuracy, best epoch, test accuracy, timings,
    versions), then ``DONE``. A folder that already has ``DONE`` for the same data, config and encoder is left
    as it is; anything else in an unfinished folder is overwritten.
    """
    from selectbench.artifacts import StageFolder
    from selectbench.io import versions
    from selectbench.models.spec import resolve_model

    config = config or ScarTrainConfig()
    stage = StageFolder(out)
    rows = load_quadruples(data)
    encoder = resolve_model(config.encoder)
    identity = {"data": data_fingerprint(data), "encoder": encoder.fingerprint, "config": config.to_dict()}
    finished = stage.finished({"identity": identity})
    if finished is not None:
        return finished
    out = stage.begin()
    start = time.perf_counter()
    result = _fit(rows, config, progress=progress)
    from selectbench.selectors.scar.model import save_ranker

    save_ranker(result.pop("model"), result.pop("tokenizer"), out)
    meta = {
        "stage": "scar-train",
        "data": {"path": str(data), "fingerprint": identity["data"], "n": len(rows)},
        "encoder": {"spec": config.encoder, "path": encoder.path, "fingerprint": encoder.fingerprint},
        "config": config.to_dict(),
        "identity": identity,
        **result,
        "timings": {"total": time.perf_counter() - start, **result.get("timings", {})},
        "versions": versions("torch", "transformers"),
    }
    return stage.finish(meta)


def _fit(rows: list[Quadruple], config: ScarTrainConfig, *, progress: bool) -> dict[str, Any]:
    import torch
    from tqdm import tqdm
    from transformers import get_linear_schedule_with_warmup

    from selectbench.selectors.scar.model import new_ranker, pick_device, tokenize_texts

    train_idx, val_idx, test_idx = split_rows(len(rows), config.holdout_fraction, config.split_seed)
    if not (train_idx and val_idx and test_idx):
        raise SelectbenchError(
            f"scar train: {len(rows)} quadruples split into {len(train_idx)} train / {len(val_idx)} validation / "
            f"{len(test_idx)} test rows; each needs at least one (use more data or a larger holdout_fraction)"
        )
    torch.manual_seed(config.seed)
    device = pick_device(config.device)
    model, tokenizer = new_ranker(
        config.encoder, linear_dim=config.linear_dim, trust_remote_code=config.trust_remote_code
    )
    model.to(device)
    masks = pair_masks(rows, config)
    # Tokenise every text once; batches pad what they take.
    ins_ids = tokenize_texts(tokenizer, [q.instruction for q in rows], config.max_length)
    ans_ids = {k: tokenize_texts(tokenizer, [q.answers[k] for q in rows], config.max_length) for k in KINDS}

    steps_per_epoch = math.ceil(len(train_idx) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)
    rank_loss = torch.nn.MarginRankingLoss(margin=config.margin)
    triplet = torch.nn.TripletMarginLoss(margin=config.triplet_margin, p=2)
    generator = torch.Generator().manual_seed(config.seed)

    def evaluate(indices: list[int]) -> float:
        return pairwise_accuracy(_score_rows(model, tokenizer, ins_ids, ans_ids, indices, config, device))

    history: list[dict[str, Any]] = []
    best = {"epoch": 0, "val_accuracy": -1.0}
    best_state: dict[str, Any] | None = None
    bar = tqdm(
        total=total_steps, unit="step", desc="scar train", file=sys.stderr, disable=not progress, mininterval=1.0
    )
    fit_start = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        epoch_start = time.perf_counter()
        model.train()
        order = [train_idx[i] for i in torch.randperm(len(train_idx), generator=generator).tolist()]
        losses: list[float] = []
        skipped = 0
        for step in range(steps_per_epoch):
            batch = order[step * config.batch_size : (step + 1) * config.batch_size]
            loss = _batch_loss(model, tokenizer, batch, ins_ids, ans_ids, masks, config, device, rank_loss, triplet)
            # Nothing passed any filter (or every term is exactly 0): the reference skips the optimizer and
            # scheduler step, so the schedule runs on the nominal step count.
            if loss is None or loss.item() == 0.0:
                skipped += 1
            else:
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(loss.item())
            bar.update(1)
        val_accuracy = evaluate(val_idx)
        record = {
            "epoch": epoch,
            "train_loss": float(np.mean(losses)) if losses else None,
            "skipped_steps": skipped,
            "val_accuracy": val_accuracy,
            "seconds": time.perf_counter() - epoch_start,
        }
        history.append(record)
        if val_accuracy > best["val_accuracy"]:  # strictly better, as the reference
            best = {"epoch": epoch, "val_accuracy": val_accuracy}
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        bar.set_postfix(epoch=epoch, val_acc=f"{val_accuracy:.3f}", best=f"{best['val_accuracy']:.3f}")
    bar.close()
    fit_seconds = time.perf_counter() - fit_start
    if best_state is not None:
        model.load_state_dict(best_state)
    test_accuracy = evaluate(test_idx)
    counts = {f"{a}>{b}": int(m[train_idx].sum()) for (a, b), m in masks.items()}
    all_pass = np.logical_and.reduce(list(masks.values()))
    counts["all_three"] = int(all_pass[train_idx].sum())
    return {
        "model": model.to("cpu"),
        "tokenizer": tokenizer,
        "device": device,
        "split": {
            "train": len(train_idx),
            "val": len(val_idx),
            "test": len(test_idx),
            "val_ids": [rows[i].id for i in val_idx],
            "test_ids": [rows[i].id for i in test_idx],
        },
        "train_pairs_passing_filter": counts,
        "steps": {"per_epoch": steps_per_epoch, "total": total_steps},
        "history": history,
        "best_epoch": best["epoch"],
        "val_accuracy": best["val_accuracy"],
        "test_accuracy": test_accuracy,
        "timings": {"fit": fit_seconds},
    }


def _batch_loss(
    model: Any,
    tokenizer: Any,
    batch: list[int],
    ins_ids: list[list[int]],
    ans_ids: dict[str, list[list[int]]],
    masks: dict[tuple[str, str], np.ndarray],
    config: ScarTrainConfig,
    device: str,
    rank_loss: Any,
    triplet: Any,
) -> Any:
    """The SCAR loss of one batch, or None when no row passes any pair filter (no forward pass is needed then)."""
    import torch

    from selectbench.selectors.scar.model import pad_batch

    row_masks = {pair: masks[pair][batch] for pair in PAIRS}
    if not any(m.any() for m in row_masks.values()):
        return None
    ins = [ins_ids[i] for i in batch]
    out: dict[str, tuple[Any, Any, Any]] = {}
    for kind in ("direct", "referenced", "human"):
        # One model call per answer kind, each re-encoding the instruction (with its own dropout), as the
        # reference does.
        i_ids, i_mask = pad_batch(tokenizer, ins, device)
        a_ids, a_mask = pad_batch(tokenizer, [ans_ids[kind][i] for i in batch], device)
        out[kind] = model(i_ids, i_mask, a_ids, a_mask)
    terms = []
    for a, b in PAIRS:
        keep = torch.from_numpy(row_masks[(a, b)]).to(device)
        if keep.any():
            s_a, s_b = out[a][0][keep], out[b][0][keep]
            terms.append(rank_loss(s_a, s_b, torch.ones_like(s_a)))
    if not terms:
        return None
    loss = torch.stack(terms).sum()
    every = torch.from_numpy(np.logical_and.reduce(list(row_masks.values()))).to(device)
    if config.disentangle_weight and every.any():
        (_, vc_d, vp_d), (_, vc_r, vp_r), (_, vc_h, vp_h) = out["direct"], out["referenced"], out["human"]
        l_c = triplet(vc_r[every], vc_h[every], vc_d[every])  # anchor referenced, positive human, negative direct
        l_p = triplet(vp_d[every], vp_r[every], vp_h[every])  # anchor direct, positive referenced, negative human
        loss = loss + config.disentangle_weight * 0.5 * (l_c + l_p)
    return loss


def _score_rows(
    model: Any,
    tokenizer: Any,
    ins_ids: list[list[int]],
    ans_ids: dict[str, list[list[int]]],
    indices: list[int],
    config: ScarTrainConfig,
    device: str,
) -> dict[str, np.ndarray]:
    from selectbench.selectors.scar.model import score_tokenized

    return {
        kind: score_tokenized(
            model,
            tokenizer,
            [ins_ids[i] for i in indices],
            [ans_ids[kind][i] for i in indices],
            batch_size=config.eval_batch_size,
            device=device,
        )
        for kind in KINDS
    }


__all__ = [
    "Quadruple",
    "load_quadruples",
    "pair_passes",
    "pairwise_accuracy",
    "split_rows",
    "train_ranker",
]
