"""Recognise a pool's shape (Alpaca, prompt/response, chat, ShareGPT, ...) and turn rows into canonical records."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

CANONICAL_FIELDS = ("id", "instruction", "input", "response", "messages")
CHAT_ROLES = {"system", "user", "assistant"}
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "system": "system",
}


class RowError(Exception):
    """A problem with one row: the loader adds the file and row number."""

    def __init__(self, field: str | None, problem: str, reason: str, hint: str = "") -> None:
        super().__init__(problem)
        self.field, self.problem, self.reason, self.hint = field, problem, reason, hint


@dataclass(frozen=True)
class Format:
    """A recognised input shape: which columns it reads and how it turns a row into canonical fields."""

    name: str
    required: tuple[str, ...]
    convert: Callable[[Mapping[str, Any], Mapping[str, str]], dict[str, Any]]
    description: str


def _text(row: Mapping[str, Any], column: str, canonical: str, *, optional: bool = False) -> str:
    """A string field, validated: present, a string, and (unless optional) not blank."""
    if column not in row or row[column] is None:
        if optional:
            return ""
        raise RowError(column, f"missing (the {canonical} column)", f"missing field {column!r}")
    value = row[column]
    if not isinstance(value, str):
        raise RowError(column, f"expected a string, found {type(value).__name__}", f"non-string field {column!r}")
    if not optional and not value.strip():
        raise RowError(column, f"is empty (the {canonical} must have text)", f"empty {canonical}")
    return value


def _flat(row: Mapping[str, Any], columns: Mapping[str, str]) -> dict[str, Any]:
    """Instruction/input/response shapes (Alpaca, prompt/response, mapped columns)."""
    return {
        "instruction": _text(row, columns["instruction"], "instruction"),
        "input": _text(row, columns["input"], "input", optional=True) if "input" in columns else "",
        "response": _text(row, columns["response"], "response"),
        "messages": None,
    }


def _chat(row: Mapping[str, Any], column: str, role_key: str, content_key: str, roles: Mapping[str, str]) -> dict:
    turns = row.get(column)
    if not isinstance(turns, list) or not turns:
        raise RowError(column, "expected a non-empty list of turns", f"bad {column!r}")
    messages = []
    for i, turn in enumerate(turns):
        where = f"{column}[{i}]"
        if not isinstance(turn, Mapping):
            raise RowError(where, f"expected an object, found {type(turn).__name__}", f"bad {column!r}")
        role, content = turn.get(role_key), turn.get(content_key)
        if role not in roles:
            raise RowError(
                f"{where}.{role_key}", f"unknown role {role!r}; expected one of {sorted(roles)}", f"bad {column!r}"
            )
        if not isinstance(content, str):
            raise RowError(
                f"{where}.{content_key}",
                f"expected a string, found {type(content).__name__}",
                f"non-string field {column!r}",
            )
        messages.append({"role": roles[role], "content": content})
    if messages[-1]["role"] != "assistant":
        raise RowError(column, "the last turn must be the assistant's (it is the response)", f"bad {column!r}")
    users = [m for m in messages[:-1] if m["role"] == "user"]
    if not users:
        raise RowError(column, "no user turn before the last assistant turn", f"bad {column!r}")
    if not users[-1]["content"].strip():
        raise RowError(column, "the last user turn is empty (the instruction must have text)", "empty instruction")
    if not messages[-1]["content"].strip():
        raise RowError(column, "the last assistant turn is empty (the response must have text)", "empty response")
    return {
        "instruction": users[-1]["content"],
        "input": "",
        "response": messages[-1]["content"],
        "messages": messages,
    }


FORMATS: dict[str, Format] = {
    f.name: f
    for f in [
        Format(
            "alpaca",
            ("instruction", "output"),
            lambda r, _: _flat(r, {"instruction": "instruction", "input": "input", "response": "output"}),
            "instruction / input / output",
        ),
        Format(
            "canonical",
            ("instruction", "response"),
            lambda r, _: _flat(r, {"instruction": "instruction", "input": "input", "response": "response"}),
            "instruction / input / response (selectbench's own records, e.g. selection.jsonl)",
        ),
        Format(
            "prompt-response",
            ("prompt", "response"),
            lambda r, _: _flat(r, {"instruction": "prompt", "response": "response"}),
            "prompt / response",
        ),
        Format(
            "prompt-completion",
            ("prompt", "completion"),
            lambda r, _: _flat(r, {"instruction": "prompt", "response": "completion"}),
            "prompt / completion",
        ),
        Format(
            "messages",
            ("messages",),
            lambda r, _: _chat(r, "messages", "role", "content", {k: k for k in CHAT_ROLES}),
            "messages: [{role, content}, ...] (OpenAI chat)",
        ),
        Format(
            "sharegpt",
            ("conversations",),
            lambda r, _: _chat(r, "conversations", "from", "value", SHAREGPT_ROLES),
            "conversations: [{from, value}, ...] (ShareGPT)",
        ),
        Format(
            "mapped", (), _flat, "any columns, named with --columns instruction=COL,response=COL[,input=COL,id=COL]"
        ),
    ]
}

CONSUMED = {
    "alpaca": ("instruction", "input", "output"),
    "canonical": ("instruction", "input", "response", "messages"),
    "prompt-response": ("prompt", "response"),
    "prompt-completion": ("prompt", "completion"),
    "messages": ("messages",),
    "sharegpt": ("conversations",),
}


def detect_format(columns: set[str] | list[str]) -> Format | None:
    """The first format whose required columns are all present, in the order of ``FORMATS``."""
    present = set(columns)
    for fmt in FORMATS.values():
        if fmt.required and set(fmt.required) <= present:
            return fmt
    return None


def known_formats() -> str:
    """One line per recognised format, for error messages."""
    return "\n".join(f"    {f.name}: {f.description}" for f in FORMATS.values())


def content_id(instruction: str, input_: str, response: str) -> str:
    """A stable id from content: the first 16 hex digits of sha256 over instruction, input and response."""
    digest = hashlib.sha256("\x1f".join((instruction, input_, response)).encode("utf-8")).hexdigest()
    return digest[:16]


def to_record(
    row: Mapping[str, Any], fmt: Format, columns: Mapping[str, str], id_column: str | None
) -> dict[str, Any]:
    """Convert one input row to a canonical record (without its final id; the loader settles ids)."""
    if not isinstance(row, Mapping):
        raise RowError(
            None, f"expected an object (a row with named fields), found {type(row).__name__}", "not an object"
        )
    record = fmt.convert(row, columns)
    record["id"] = None
    if id_column is not None and row.get(id_column) is not None:
        value = row[id_column]
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise RowError(id_column, f"expected a string or integer id, found {type(value).__name__}", "bad id")
        if isinstance(value, str) and not value.strip():
            raise RowError(id_column, "is empty", "bad id")
        record["id"] = str(value)
    used = set(CONSUMED.get(fmt.name, columns.values())) | {id_column}
    meta = {k: v for k, v in row.items() if k not in used}
    # A `meta` object (as selection.jsonl and the demo pool write it) is flattened into the record's meta, so a
    # record reads the same whether its extra fields sat at the top level or inside `meta`.
    if isinstance(meta.get("meta"), Mapping):
        meta = {**meta.pop("meta"), **meta}
    record["meta"] = meta
    return record
