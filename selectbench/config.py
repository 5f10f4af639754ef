"""The strict-config builder: dataclasses from YAML-like data, every problem reported at once with its key path.

Every config family (the experiment, the fine-tuning recipe, benchmark options, SCAR training) is a dataclass whose
fields carry their help text in ``field.metadata["help"]``; :func:`build` turns a mapping into it, recording unknown
keys (with a "did you mean"), wrong types and the family's own value rules in one problem list. ``key=value`` text
from the command line is parsed here too, once for every CLI.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import yaml

from selectbench.errors import SelectbenchError

T = TypeVar("T")
# What `_convert` returns for a value it reported: the field is left out (its default stands in), so that the checks
# of the fields that are right still run without tripping over it.
_BAD: Any = object()


class ConfigError(SelectbenchError):
    """A config with problems; the message lists all of them, each with its key path."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem{'s' * (len(problems) != 1)} in the config:\n{lines}")


@dataclass(frozen=True)
class ConfigRules:
    """How one config family is built: the phrasing of its problems, a shorthand, and checks of the keys given.

    A dataclass opts in with ``CONFIG_RULES: ClassVar[ConfigRules] = ConfigRules(...)``; without it, the defaults.
    The phrasings are per family so that the messages users already know stay as they are.

    Attributes:
        unknown: one unknown key; ``{path}`` (its key path), ``{key}``, ``{prefix}`` (the parent's path and ": ",
            or nothing at the top), ``{hint}`` (" (did you mean 'x'?)" or nothing) and ``{valid}`` (the valid keys).
        mismatch: a value of the wrong type or not among the choices; ``{path}``, ``{expected}``, ``{value}``.
        shorthand: a plain string given for the whole mapping means ``{shorthand: string}`` (``- random`` for
            ``- name: random``).
        check_given: problems that depend on which keys were given, not only on the values (a key that the chosen
            mode ignores); gets the known keys as given, before any conversion.
    """

    unknown: str = "{path}: unknown key; valid keys: {valid}{hint}"
    mismatch: str = "{path}: expected {expected}, found {value!r}"
    shorthand: str | None = None
    check_given: Callable[[Mapping[str, Any]], list[str]] | None = None


DEFAULT_RULES = ConfigRules()


def option(default: Any = dataclasses.MISSING, help: str = "", *, factory: Callable[[], Any] | None = None) -> Any:
    """A config field with its help text in ``field.metadata["help"]``: ``lr: float = option(2e-5, "the rate")``."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


def build(cls: type[T], data: Any, problems: list[str], where: str = "", rules: ConfigRules | None = None) -> T | None:
    """Build dataclass ``cls`` from the mapping ``data`` (None: all defaults), recording problems instead of raising.

    Unknown keys, missing required keys and values of the wrong type (also inside nested dataclasses, lists and
    mappings) each add one problem, with its key path under ``where``; a value of the wrong type (or a list or
    mapping holding one) is left out, so the rest is still checked. ``cls.__post_init__`` may raise
    :class:`ConfigError` for its value rules, and ``CONFIG_RULES.check_given`` may return problems: both are recorded
    too. YAML 1.1 reads ``2e-4`` as text and a numeric name as a number: a float field takes such text as the
    number, and a text field takes a number as its text.

    ``rules`` phrase the problems of a ``cls`` that declares no ``CONFIG_RULES``; a nested dataclass without its
    own is phrased like its parent.

    Returns:
        The instance, or None when it cannot be built (a required key is missing, or its value rules failed).
    """
    rules = getattr(cls, "CONFIG_RULES", None) or rules or DEFAULT_RULES
    if isinstance(data, str) and rules.shorthand:
        data = {rules.shorthand: data}
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        problems.append(rules.mismatch.format(path=where or "the config", expected="a mapping", value=data))
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    valid = ", ".join(fields)
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            prefix = f"{where}: " if where else ""
            problems.append(
                rules.unknown.format(path=join(where, key), key=key, prefix=prefix, hint=hint, valid=valid)
            )
    values: dict[str, Any] = {}
    missing = False
    for name, spec in fields.items():
        if name in data:
            value = _convert(hints[name], data[name], join(where, name), problems, rules)
            if value is not _BAD:
                values[name] = value
        elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
            problems.append(f"{join(where, name)}: required")
            missing = True
    if rules.check_given is not None:
        given = {k: v for k, v in data.items() if k in fields}
        problems.extend(_under(where, p, fields) for p in rules.check_given(given))
    if missing:
        return None
    try:
        return cls(**values)
    except ConfigError as err:
        problems.extend(_under(where, p, fields) for p in err.problems)
        return None


def mismatches(obj: Any) -> dict[str, str]:
    """The fields of dataclass instance ``obj`` whose values do not fit their types: ``{name: problem}``.

    For ``__post_init__`` checks of instances built directly in code, phrased like :func:`build` phrases them.
    """
    rules: ConfigRules = getattr(type(obj), "CONFIG_RULES", DEFAULT_RULES)
    hints = typing.get_type_hints(type(obj))
    found = {}
    for spec in dataclasses.fields(obj):
        if not spec.init:
            continue
        scratch: list[str] = []
        _convert(hints[spec.name], getattr(obj, spec.name), spec.name, scratch, rules, coerce=False)
        if scratch:
            found[spec.name] = scratch[0]
    return found


def describe_fields(cls: type) -> list[tuple[str, Any, str]]:
    """``(key, default, help)`` for every field of config dataclass ``cls``, in declaration order (for ``--help``
    and ``ls`` texts); a required field's default is ``dataclasses.MISSING``."""
    rows = []
    for spec in dataclasses.fields(cls):
        if not spec.init:
            continue
        default = spec.default_factory() if spec.default_factory is not dataclasses.MISSING else spec.default
        rows.append((spec.name, default, spec.metadata.get("help", "")))
    return rows


def join(where: str, key: Any) -> str:
    """The key path of ``key`` under ``where``: ``join("pool", "limit") == "pool.limit"``."""
    return f"{where}.{key}" if where else str(key)


def _under(where: str, problem: str, fields: Iterable[str]) -> str:
    """A family's own problem, placed under ``where``: ``limit: ...`` becomes ``pool.limit: ...``."""
    if not where:
        return problem
    head = problem.split(":", 1)[0]
    return f"{where}.{problem}" if head in fields else f"{where}: {problem}"


# ----------------------------------------------------------------------------------------------- types


def _convert(hint: Any, value: Any, where: str, problems: list[str], rules: ConfigRules, coerce: bool = True) -> Any:
    """``value`` checked against ``hint`` (and, with ``coerce``, converted where YAML misread it); problems
    recorded."""
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if isinstance(value, hint):
            return value
        built = build(hint, value, problems, where, dataclasses.replace(rules, shorthand=None, check_given=None))
        return _BAD if built is None else built
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option_hint in options:  # an exact fit first: 5 is an int before it is the text "5"
            if _fits(option_hint, value):
                return _convert(option_hint, value, where, problems, rules, coerce)
        for option_hint in options if coerce else []:
            scratch: list[str] = []
            converted = _convert(option_hint, value, where, scratch, rules, coerce)
            if not scratch and converted is not _BAD:
                return converted
        return _mismatch(hint, value, where, problems, rules)
    if origin is Literal:
        return value if value in args else _mismatch(hint, value, where, problems, rules)
    if origin in (list, tuple) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return _mismatch(hint, value, where, problems, rules)
        if not args:
            return value
        items = [_convert(args[0], v, f"{where}[{i}]", problems, rules, coerce) for i, v in enumerate(value)]
        return _BAD if any(item is _BAD for item in items) else items
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            return _mismatch(hint, value, where, problems, rules)
        if not args:
            return dict(value)
        entries = {k: _convert(args[1], v, join(where, k), problems, rules, coerce) for k, v in value.items()}
        return _BAD if any(entry is _BAD for entry in entries.values()) else entries
    if coerce and hint is float and isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads "2e-4" (no dot) as text
        except ValueError:
            pass
    if coerce and hint is str and _is_number(value):
        return str(value)  # e.g. a model name that YAML read as a number
    if not _fits(hint, value):
        return _mismatch(hint, value, where, problems, rules)
    return value


def _fits(hint: Any, value: Any) -> bool:
    """Whether ``value`` is of type ``hint`` as it stands, with no conversion (a shallow test for unions)."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return value in typing.get_args(hint)
    if origin in (list, tuple) or hint in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin is dict or hint is dict or (dataclasses.is_dataclass(hint) and isinstance(hint, type)):
        return isinstance(value, Mapping)
    if hint is Any:
        return True
    if hint is float:
        return _is_number(value)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _mismatch(hint: Any, value: Any, where: str, problems: list[str], rules: ConfigRules) -> Any:
    problems.append(rules.mismatch.format(path=where, expected=describe_type(hint), value=value))
    return _BAD


def describe_type(hint: Any) -> str:
    """``int | None`` -> ``"int or null"``: a type as the problem messages name it."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(a) for a in args)
    if origin is Literal:
        return f"one of {', '.join(map(str, args))}"
    if hint is type(None):
        return "null"
    if origin in (list, tuple) or hint in (list, tuple):
        return "a list"
    if origin is dict or hint is dict or dataclasses.is_dataclass(hint):
        return "a mapping"
    return getattr(hint, "__name__", str(hint))


# ----------------------------------------------------------------------------------------------- key=value


def parse_value(text: str) -> Any:
    """One command-line value, read as YAML: ``512`` is an int, ``[a, b]`` a list, ``null`` None; text that is
    not valid YAML stays text, and an empty value is the empty string."""
    if not text.strip():
        return ""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def split_assignment(pair: str) -> tuple[str, Any] | None:
    """``"a.b=1"`` -> ``("a.b", 1)``; None when there is no ``=`` or no key before it."""
    key, sep, text = pair.partition("=")
    if not sep or not key.strip():
        return None
    return key.strip(), parse_value(text)


def parse_assignments(pairs: Iterable[str] | None, flag: str = "--param") -> dict[str, Any]:
    """``["max_length=512", "template=alpaca"]`` -> ``{"max_length": 512, "template": "alpaca"}`` (YAML values).

    Raises:
        SelectbenchError: a pair without ``=``; ``flag`` names the option in the message.
    """
    values: dict[str, Any] = {}
    for pair in pairs or []:
        parsed = split_assignment(pair)
        if parsed is None:
            raise SelectbenchError(f"{flag} expects key=value, got {pair!r}")
        values[parsed[0]] = parsed[1]
    return values


def apply_override(data: dict[str, Any], item: str, problems: list[str]) -> None:
    """Apply ``--set a.b.c=value`` to the nested ``data`` in place (``selectors.1.name=x`` indexes a list);
    a malformed override is recorded in ``problems``."""
    parsed = split_assignment(item)
    if parsed is None:
        problems.append(f"--set {item!r}: expected key.path=value")
        return
    key, value = parsed
    parts = key.split(".")
    node: Any = data
    for part in parts[:-1]:
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
            continue
        if not isinstance(node, dict):
            problems.append(f"--set {key}: {part!r} is not a mapping")
            return
        node = node.setdefault(part, {})
    last = parts[-1]
    if isinstance(node, list) and last.isdigit() and int(last) < len(node):
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        problems.append(f"--set {key}: cannot set a key inside a {type(node).__name__}")
