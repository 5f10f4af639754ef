"""A third-party selector package, really installed, is found through the entry-point group."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import run_cli, write_jsonl


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build and pip-install a small plug-in package into its own folder (not into the test environment)."""
    src = tmp_path_factory.mktemp("plugin-src")
    (src / "shortest_selector").mkdir()
    (src / "pyproject.toml").write_text(
        textwrap.dedent("""
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "selectbench-shortest"
        version = "0.1.0"

        [project.entry-points."selectbench.selectors"]
        shortest = "shortest_selector:ShortestSelector"
    """)
    )
    (src / "shortest_selector" / "__init__.py").write_text(
        textwrap.dedent('''
        """A plug-in selector: the shortest responses."""
        from dataclasses import dataclass

        import pyarrow.compute as pc

        from selectbench.selectors import ScoreSelector


        @dataclass(kw_only=True)
        class ShortestSelector(ScoreSelector):
            """Shortest responses first (a plug-in example)."""

            def score(self, pool):
                return -pc.utf8_length(pool.column("response")).to_numpy().astype(float)
    ''')
    )
    site = tmp_path_factory.mktemp("plugin-site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(src),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return site


def test_plugin_is_listed_and_selectable_by_name(plugin_site: Path, tmp_path: Path) -> None:
    env = {"PYTHONPATH": str(plugin_site)}
    listing = run_cli("ls", "selectors", env=env)
    assert listing.returncode == 0, listing.stderr
    line = next(line for line in listing.stdout.splitlines() if line.startswith("shortest"))
    assert "Shortest responses first" in line and "plug-in: selectbench-shortest" in line

    rows = [{"instruction": f"q{i}", "output": "x" * (10 - i)} for i in range(8)]
    pool = write_jsonl(tmp_path / "p.jsonl", rows)
    result = run_cli(
        "select",
        "--pool",
        str(pool),
        "--selector",
        "shortest",
        "--budget",
        "3",
        "--out",
        str(tmp_path / "out"),
        env=env,
    )
    assert result.returncode == 0, result.stderr
    picked = (tmp_path / "out" / "selection.jsonl").read_text().splitlines()
    assert [len(json.loads(p)["response"]) for p in picked] == [3, 4, 5]


def test_plugin_passes_the_conformance_suite(plugin_site: Path) -> None:
    code = (
        "from selectbench.selectors import make_selector; from selectbench.testing import check_selector; "
        "check_selector(make_selector('shortest')); print('ok')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(plugin_site)},
        timeout=300,
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
