"""Pull the Python program out of a Markdown-ish answer (fenced blocks, indented blocks, or bare code)."""

from __future__ import annotations

import re

_FENCE = re.compile(r"^```[ \t]*([\w+-]*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_CODE_TAGS = {"", "python", "py", "python3"}


def fenced_blocks(text: str, *, tags: set[str] | None = None) -> list[str]:
    """Return the bodies of the fenced code blocks in ``text`` whose language tag is in ``tags``.

    Args:
        text: Markdown text.
        tags: accepted language tags, lower-case; ``""`` stands for an untagged fence. Default: untagged and Python.
    """
    wanted = _CODE_TAGS if tags is None else tags
    return [body for tag, body in _FENCE.findall(text) if tag.lower() in wanted]


def indented_blocks(text: str) -> list[str]:
    """Return the Markdown indented code blocks (lines indented by 4+ spaces), dedented by 4 spaces."""
    blocks: list[list[str]] = []
    current: list[str] = []
    for line in text.split("\n"):
        if line.startswith("    ") or (current and not line.strip()):
            current.append(line[4:])
            continue
        if current:
            blocks.append(current)
            current = []
    if current:
        blocks.append(current)
    return ["\n".join(block).strip("\n") + "\n" for block in blocks if any(s.strip() for s in block)]


def extract_program(text: str) -> str:
    """The Python program an answer gives, by one fixed rule.

    Fenced blocks (untagged or tagged python) win; otherwise Markdown indented blocks; otherwise the
    whole text is taken as code. Blocks are joined in order with a blank line between them.
    """
    blocks = fenced_blocks(text) or indented_blocks(text)
    if blocks:
        return "\n\n".join(block.rstrip("\n") for block in blocks) + "\n"
    return text
