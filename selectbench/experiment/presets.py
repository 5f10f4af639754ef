"""The embedded experiments: the demo (`selectbench run` with no config) and its quick preset."""

from __future__ import annotations

from pathlib import Path

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
DEMO_PATH = CONFIGS / "demo.yaml"
QUICK_PATH = CONFIGS / "quick.yaml"
DEMO_CONFIG = DEMO_PATH.read_text(encoding="utf-8")
