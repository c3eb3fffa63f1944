"""The one import direction of docs/architecture.md, read from the code's own imports.

clinalign_base imports nothing of ours; annotation → base; reward_models → annotation + base;
align → all. Lazy imports inside functions count, and so does `importlib.import_module("...")`.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = ("clinalign_base", "annotation", "reward_models", "align")
ALLOWED = {
    "clinalign_base": {"clinalign_base"},
    "annotation": {"clinalign_base", "annotation"},
    "reward_models": {"clinalign_base", "annotation", "reward_models"},
    "align": set(OURS),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute name of `from ... import` (relative imports resolved against `module`)."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imported_names(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) for every import in the file, at any depth (functions, branches, try blocks)."""
    module, is_package = _module_name(path), path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            yield node.lineno, _resolve(node, module, is_package)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            yield node.lineno, node.args[0].value


def violations(package: str) -> list[str]:
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, name in imported_names(path):
            top = name.split(".")[0]
            if top in OURS and top not in ALLOWED[package]:
                found.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    return found


@pytest.mark.parametrize("package", OURS)
def test_imports_follow_the_one_direction(package):
    assert violations(package) == []


def test_the_checker_sees_lazy_and_relative_imports(tmp_path, monkeypatch):
    pkg = tmp_path / "annotation"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "x.py").write_text("def f():\n    from align.models import resolve_model\n"
                              "    from . import y\n    import importlib\n"
                              "    importlib.import_module('reward_models.train')\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert violations("annotation") == ["annotation/x.py:2 imports align.models",
                                        "annotation/x.py:5 imports reward_models.train"]


def test_every_package_is_installed():
    """pyproject's packages.find includes every top-level package (an editable install maps each one)."""
    text = (ROOT / "pyproject.toml").read_text()
    assert all(f'"{pkg}*"' in text for pkg in OURS)


def test_clinalign_help_imports_no_torch():
    """Every command module is imported for --help, so a top-level torch import anywhere shows here."""
    code = ("import sys\nfrom align.cli import main\nrc = main(['--help'])\n"
            "print('RESULT', rc, 'torch' in sys.modules)\n")
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                         env=env)
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT")), None)
    assert line is not None, out.stderr[-2000:]
    assert line == "RESULT 0 False", "`clinalign --help` imported torch"
