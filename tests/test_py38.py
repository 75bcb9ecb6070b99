"""The package must stay valid Python 3.8 (JetPack 5 ships 3.8)."""

import ast
import os
import shutil
import subprocess
import sys

import pytest

import changenet_trt

PACKAGE_DIR = os.path.dirname(changenet_trt.__file__)


def package_files():
    for root, _, files in os.walk(PACKAGE_DIR):
        for name in sorted(files):
            if name.endswith(".py"):
                yield os.path.join(root, name)


def test_syntax_parses_as_python_38():
    for path in package_files():
        with open(path) as handle:
            ast.parse(handle.read(), path, feature_version=(3, 8))


def test_no_runtime_pep604_or_builtin_generics():
    """`X | None` or `list[int]` evaluated at run time fail on 3.8 (annotations included,
    since the package does not use `from __future__ import annotations`)."""
    bad = []
    for path in package_files():
        tree = ast.parse(open(path).read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
                for side in (node.left, node.right):
                    if isinstance(side, ast.Constant) and side.value is None:
                        bad.append("{}:{} X | None".format(path, node.lineno))
            if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
                if node.value.id in ("list", "dict", "tuple", "set", "frozenset", "type"):
                    bad.append("{}:{} {}[...]".format(path, node.lineno, node.value.id))
    assert not bad, bad


def test_vermin_finds_nothing_newer_than_38():
    vermin = shutil.which("vermin") or os.path.join(os.path.dirname(sys.executable), "vermin")
    if not os.path.exists(vermin):
        pytest.skip("vermin is not installed (pip install -e '.[dev]')")
    proc = subprocess.run(
        [vermin, "--target=3.8-", "--violations", "--no-tips", "--eval-annotations", PACKAGE_DIR],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
