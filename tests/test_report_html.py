"""The HTML report in a real headless Chromium: every plot is displayed. Run: pytest tests/test_report_html.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from reports_helpers import make_run

from selectbench.reports import write_reports

# Appended to a copy of index.html: after load, record what the browser made of every image.
PROBE = """
<script>
window.addEventListener("load", () => {
  const shown = [...document.querySelectorAll("figure")].map((fig) => {
    const img = fig.querySelector("img");
    const box = img ? img.getBoundingClientRect() : {width: 0, height: 0};
    const style = img ? getComputedStyle(img) : {};
    return {
      id: fig.id,
      complete: !!img && img.complete,
      naturalWidth: img ? img.naturalWidth : 0,
      naturalHeight: img ? img.naturalHeight : 0,
      shownWidth: box.width,
      shownHeight: box.height,
      visible: !!img && style.display !== "none" && style.visibility !== "hidden" && style.opacity !== "0",
      caption: (fig.querySelector("figcaption") || {}).textContent || "",
    };
  });
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify(shown);
  document.body.appendChild(out);
});
</script>
"""


def _chromium() -> str:
    """The Chromium binary; skips (or fails, with SELECTBENCH_REQUIRE_CHROMIUM=1) when there is none."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    reason = (
        "headless Chromium not found: `make test` installs the Debian package `chromium` when it can "
        "(apt-get install -y chromium, as root); without it the HTML report is not checked in a browser"
    )
    if os.environ.get("SELECTBENCH_REQUIRE_CHROMIUM") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A report written from the realistic fixture run."""
    root = tmp_path_factory.mktemp("html")
    return write_reports([make_run(root / "run")], root / "report")


def test_index_html_is_self_contained(report: dict[str, Path]) -> None:
    html = report["index.html"].read_text(encoding="utf-8")
    references = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", html)
    external = [ref for ref in references if not (ref.startswith("data:image/png;base64,") or ref.startswith("#"))]
    assert external == [], f"index.html loads outside resources: {external}"
    assert "<script" not in html.lower()
    assert "url(" not in html
    plots = sorted(name for name in report if name.startswith("plots/"))
    assert html.count('<img src="data:image/png;base64,') == len(plots) >= 8


def test_chromium_displays_every_plot(report: dict[str, Path], tmp_path: Path) -> None:
    chromium = _chromium()
    # A copy alone in an empty folder: an image that needed a file beside the page could not load here.
    page = tmp_path / "alone" / "probe.html"
    page.parent.mkdir()
    page.write_text(report["index.html"].read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"))
    command = [
        chromium,
        "--headless",
        "--no-sandbox",  # root in containers and CI
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1280,900",
        "--virtual-time-budget=10000",
        "--dump-dom",
        page.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert found, f"the probe did not run; chromium printed:\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}"
    shown = {entry["id"]: entry for entry in json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))}

    plots = {name.removeprefix("plots/"): path for name, path in report.items() if name.startswith("plots/")}
    assert sorted(shown) == sorted(plots), "every written plot has one figure on the page"
    for name, path in plots.items():
        entry = shown[name]
        width, height = _png_size(path)
        assert entry["complete"] and entry["visible"], entry
        assert (entry["naturalWidth"], entry["naturalHeight"]) == (width, height), f"{name} decoded wrong: {entry}"
        assert entry["shownWidth"] > 200 and entry["shownHeight"] > 100, f"{name} is not shown at a useful size"
        assert len(entry["caption"]) > 40, f"{name} has no real caption"
