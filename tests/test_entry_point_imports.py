"""The benchmarks, jobs and scripts are not imported by the suite; what they import from the package
must still exist (a name moved or removed in the package once broke two benchmarks unnoticed)."""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINTS = sorted(p for d in ("benchmarks", "ray_jobs", "scripts") for p in (ROOT / d).glob("*.py"))


def _missing(path: Path) -> list[str]:
    missing = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "simpersona":
            module = importlib.import_module(node.module)
            for alias in node.names:
                if hasattr(module, alias.name):
                    continue
                try:
                    importlib.import_module(f"{node.module}.{alias.name}")
                except ModuleNotFoundError:
                    missing.append(f"{node.module}.{alias.name} (line {node.lineno})")
        elif isinstance(node, ast.Import):
            missing += [f"{a.name} (line {node.lineno})" for a in node.names
                        if a.name.split(".")[0] == "simpersona" and importlib.util.find_spec(a.name) is None]
    return missing


@pytest.mark.parametrize("path", ENTRY_POINTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_name_an_entry_point_imports_from_the_package_exists(path):
    assert _missing(path) == []


def test_the_check_sees_a_missing_name(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from simpersona.config import load, to_dict\nimport simpersona.nothing_here\n")
    assert _missing(bad) == ["simpersona.config.to_dict (line 1)", "simpersona.nothing_here (line 2)"]
