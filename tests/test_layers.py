"""The package's shape: no import cycle (imports inside functions included), no private name taken from another
package, no module over 500 lines, the stage marker spelled in one module, no code kept in strings."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "selectbench"
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, list[str]]]:
    """(imported selectbench module, names taken from it) for every import statement, wherever it stands."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names if alias.name.startswith("selectbench")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            if not module.startswith("selectbench"):
                continue
            names = [alias.name for alias in node.names]
            # `from pkg import submodule` imports the submodule.
            found += [(f"{module}.{n}", []) for n in names if f"{module}.{n}" in MODULES]
            taken = [n for n in names if f"{module}.{n}" not in MODULES]
            if taken:
                found.append((module, taken))
    return found


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        targets = set()
        for module, _ in _imports(name, path):
            while module not in MODULES and "." in module:
                module = module.rpartition(".")[0]
            if module != name:
                targets.add(module)
        graph[name] = targets
    return graph


def test_no_import_cycle() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def _package_of(module: str) -> str:
    path = MODULES[module]
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def test_no_private_name_crosses_a_package() -> None:
    crossings = []
    for name, path in MODULES.items():
        for module, names in _imports(name, path):
            if module not in MODULES or _package_of(module) == _package_of(name):
                continue
            crossings += [f"{name} takes {module}.{n}" for n in names if n.startswith("_") and not n.startswith("__")]
    assert not crossings, "\n".join(crossings)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_size(name: str) -> None:
    lines = MODULES[name].read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_LINES, f"{MODULES[name]} has {lines} lines (at most {MAX_LINES}); split it by concern"


def test_the_done_marker_is_spelled_in_one_module() -> None:
    spelled = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in ("DONE", "meta.json"):
                spelled.append(f"{name}: {node.value!r}")
    assert sorted({s.split(":")[0] for s in spelled}) == ["selectbench.artifacts"], "\n".join(spelled)


# The sandbox's child process runs the sample program it is given: executing that string is its purpose.
RUNS_GIVEN_PROGRAMS = {"selectbench.evaluate.sandbox_child"}


def test_no_code_runs_from_a_string() -> None:
    """No ``python -c`` programs, ``exec`` or ``eval``: code lives in modules that linters and tests can import."""
    found = []
    for name, path in MODULES.items():
        if name in RUNS_GIVEN_PROGRAMS:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("exec", "eval"):
                found.append(f"{name}: {node.func.id}()")
            if isinstance(node, ast.List | ast.Tuple) and any(
                isinstance(e, ast.Constant) and e.value == "-c" for e in node.elts
            ):
                found.append(f"{name}: a '-c' program")
    assert not found, "\n".join(found)
