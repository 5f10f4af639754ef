"""SCAR's optional pre-ranking filters: exact dedup, the English filter, and MinHash near-dedup (datasketch).

Each takes parallel lists of instruction and answer texts and returns a boolean keep-mask in input order.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import pairwise

import numpy as np

from selectbench.errors import SelectbenchError

ASCII_LETTER = re.compile(r"[a-zA-Z]")
# Words for near-dedup: runs of word characters, and each other non-space character on its own (close to NLTK's
# word_tokenize, which the reference uses, without needing NLTK's punkt data).
WORD = re.compile(r"\w+|[^\w\s]")
LSH_WEIGHTS = (0.02, 0.98)  # datasketch's (false positive, false negative) weights when it picks the banding


def exact_dedup_mask(instructions: Sequence[str], answers: Sequence[str]) -> np.ndarray:
    """Keep the first occurrence of each ``(instruction.strip(), answer.strip())``."""
    seen: set[tuple[str, str]] = set()
    keep = np.zeros(len(answers), dtype=bool)
    for i, key in enumerate(zip((s.strip() for s in instructions), (s.strip() for s in answers), strict=True)):
        if key not in seen:
            seen.add(key)
            keep[i] = True
    return keep


def english_share(text: str) -> float:
    """Share of all characters (spaces, digits and punctuation included) that are ASCII letters ``[a-zA-Z]``."""
    return len(ASCII_LETTER.findall(text)) / len(text) if text else 0.0


def english_mask(instructions: Sequence[str], answers: Sequence[str], min_share: float = 0.7) -> np.ndarray:
    """Keep pairs whose instruction and answer are both more than ``min_share`` ASCII letters (SCAR: 70%).

    Code-heavy answers can fall below the bar; the reference applies the rule as is.
    """
    return np.array(
        [
            english_share(q) > min_share and english_share(a) > min_share
            for q, a in zip(instructions, answers, strict=True)
        ],
        dtype=bool,
    )


def word_bigrams(text: str) -> set[str]:
    """Lower-cased word bigrams of a text (the shingles SCAR's near-dedup compares)."""
    words = WORD.findall(text.lower())
    return {f"{a} {b}" for a, b in pairwise(words)}


def jaccard(a: set[str], b: set[str]) -> float:
    """Exact Jaccard similarity of two sets (0 for two empty sets)."""
    union = len(a | b)
    return len(a & b) / union if union else 0.0


def near_dedup_mask(
    instructions: Sequence[str],
    answers: Sequence[str],
    *,
    threshold: float = 0.5,
    num_perm: int = 128,
    candidates: np.ndarray | None = None,
) -> np.ndarray:
    """Drop near-duplicates: a pair is dropped when its word-bigram set (of ``instruction + " " + answer``) has
    exact Jaccard >= ``threshold`` with a pair kept before it (pool order, so the first of a group is kept).

    Candidate pairs come from datasketch's MinHash LSH (``num_perm`` permutations, fixed seed, banding chosen by
    datasketch for ``threshold`` with weights favouring recall: a pair at exactly the threshold is found with
    probability >= 0.95, pairs above it more surely); each candidate is verified with the exact Jaccard, so
    nothing is dropped on an estimate. This replaces the reference's exhaustive all-pairs second pass
    (quadratic). Texts with no bigram (one word) are never near-duplicates.

    Args:
        instructions, answers: the pairs' texts.
        threshold: Jaccard similarity at or above which a pair is a near-duplicate (SCAR: 0.5).
        num_perm: MinHash permutations (SCAR: 128).
        candidates: optional indices to consider (others are not kept); default all.
    """
    from datasketch import MinHash, MinHashLSH

    n = len(answers)
    keep = np.zeros(n, dtype=bool)
    order = range(n) if candidates is None else sorted(int(i) for i in candidates)
    # Banding weighted towards recall: at exactly the threshold a true near-duplicate becomes a candidate with
    # probability >= 0.95 (about 0.55 with datasketch's even weights), and more surely above it; the extra
    # candidates cost only an exact Jaccard check each.
    try:
        lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=LSH_WEIGHTS)
    except ValueError as err:
        raise SelectbenchError(
            f"near-dedup: datasketch cannot band {num_perm} permutations for threshold {threshold} ({err}); use "
            "more permutations (num_perm) or a lower threshold"
        ) from None
    kept_sets: dict[int, set[str]] = {}
    for i in order:
        shingles = word_bigrams(f"{instructions[i]} {answers[i]}")
        if not shingles:
            keep[i] = True
            continue
        signature = MinHash(num_perm=num_perm, seed=1)
        signature.update_batch([s.encode("utf-8") for s in shingles])
        if any(jaccard(shingles, kept_sets[j]) >= threshold for j in lsh.query(signature)):
            continue
        keep[i] = True
        kept_sets[i] = shingles
        lsh.insert(i, signature)
    return keep


__all__ = ["english_mask", "english_share", "exact_dedup_mask", "jaccard", "near_dedup_mask", "word_bigrams"]
