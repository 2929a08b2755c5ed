"""The shape of the package: what import-linter cannot see (its layers and cycles are `lint-imports`, run by the
README's test command).

- every pipeline package is a folder whose `__init__.py` imports nothing, so `homegpt --help` stays free of torch;
- no module reaches into another's private names (`from homegpt.x import _y`, or `x._y` on an imported module);
- no function is over 100 lines.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "homegpt"
PACKAGES = ("runtime", "model", "data", "rundir", "generate", "train", "share", "eval", "serve", "chat", "plan", "cli")
MAX_FUNCTION_LINES = 100


def sources(*folders: Path) -> list[Path]:
    return sorted(p for folder in folders for p in folder.rglob("*.py"))


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(path: Path) -> list[str]:
    """`from homegpt... import _name` and `module._name` where `module` is a homegpt module imported here."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    modules, found = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("homegpt"):
            for alias in node.names:
                if is_private(alias.name):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {node.module}.{alias.name}")
                modules.add(alias.asname or alias.name)  # maybe a module (from homegpt.data import shards)
        elif isinstance(node, ast.Import):
            modules.update(a.asname for a in node.names if a.name.startswith("homegpt") and a.asname)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
                and is_private(node.attr)):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} uses {node.value.id}.{node.attr}")
    return found


def test_packages_follow_the_pipeline_and_import_nothing_eagerly():
    for name in PACKAGES:
        init = PACKAGE / name / "__init__.py"
        assert init.is_file(), f"homegpt.{name} is a package"
        if name != "cli":  # cli's __init__ is the command itself (homegpt.cli:main), torch-free by test below
            body = [n for n in ast.parse(init.read_text(encoding="utf-8")).body if not isinstance(n, ast.Expr)]
            assert not body, f"{init.relative_to(ROOT)} should hold a docstring at most"
    flat = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert flat == ["__init__.py", "__main__.py", "choices.py", "demo.py", "errors.py", "progress.py"], flat


def test_no_private_name_is_used_outside_its_module():
    found = [use for path in sources(PACKAGE, ROOT / "tests", ROOT / "benchmarks") for use in private_uses(path)]
    assert not found, "\n".join(found)


def test_no_function_is_over_100_lines():
    long = []
    for path in sources(PACKAGE):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} is {n} lines")
    assert not long, "\n".join(long)


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["serve", "--help"]])
def test_help_does_not_import_torch(argv):
    code = ("import sys\nfrom homegpt.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "heavy = sorted(m for m in ('torch', 'numpy', 'transformers', 'tokenizers') if m in sys.modules)\n"
            "print('loaded:', ','.join(heavy))")
    r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "loaded:", r.stdout[-300:]
