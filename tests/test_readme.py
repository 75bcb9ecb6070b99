"""The README names only things that exist: every ``changenet_trt`` dotted name, file path and
``from changenet_trt... import`` resolves, and its layout list matches the package tree. And
what pyproject.toml makes every user install, the package imports."""

import ast
import importlib
import os
import re

import pytest

import changenet_trt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE_DIR = os.path.dirname(changenet_trt.__file__)
with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as _handle:
    README = _handle.read()

DOTTED = sorted(set(re.findall(r"changenet_trt(?:\.[A-Za-z_][A-Za-z0-9_]*)+", README)))
PATHS = sorted({p.rstrip(".") for p in re.findall(r"changenet_trt/[A-Za-z0-9_./]*", README)})
FROM_IMPORTS = sorted(set(re.findall(r"^\s*from (changenet_trt[\w.]*) import ([\w, ]+)$", README, re.MULTILINE)))


def resolve(dotted):
    """The object a dotted name names: the longest importable module prefix, then attributes.
    Raises ImportError/AttributeError when it names nothing."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError as exc:
            if exc.name is None or not ".".join(parts[:cut]).startswith(exc.name):
                raise  # the module exists but one of its own imports is missing
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def test_the_readme_names_things():
    assert len(DOTTED) >= 10 and PATHS and FROM_IMPORTS


@pytest.mark.parametrize("dotted", DOTTED)
def test_dotted_name_exists(dotted):
    resolve(dotted)


@pytest.mark.parametrize("path", PATHS)
def test_path_exists(path):
    assert os.path.exists(os.path.join(ROOT, path)), path


@pytest.mark.parametrize("module,names", FROM_IMPORTS)
def test_from_import_works(module, names):
    for name in names.split(","):
        resolve(module + "." + name.strip())


def test_resolve_refuses_names_that_do_not_exist():
    with pytest.raises((ImportError, AttributeError)):
        resolve("changenet_trt.no_such_module.Thing")
    with pytest.raises(AttributeError):
        resolve("changenet_trt.api.no_such_function")


def package_tree():
    """{group: [module stems]}: group "" holds the top-level modules, else a subpackage's name
    (``__init__`` and ``__main__`` left out; a package inside a subpackage counts as one module)."""
    tree = {"": []}
    for name in sorted(os.listdir(PACKAGE_DIR)):
        path = os.path.join(PACKAGE_DIR, name)
        if name.endswith(".py") and name != "__init__.py":
            tree[""].append(name[:-3])
        elif os.path.isfile(os.path.join(path, "__init__.py")):
            tree[name] = sorted(n[:-3] if n.endswith(".py") else n for n in os.listdir(path) if not n.startswith("__")
                                and (n.endswith(".py") or os.path.isfile(os.path.join(path, n, "__init__.py"))))
    return tree


def readme_layout():
    """{group: [backticked words of its line]} from the README's layout list."""
    start = README.index("Layout: `changenet_trt/`")
    end = README.find("\n## ", start)
    section = README[start:end if end >= 0 else len(README)]
    layout = {}
    for line in re.split(r"\n- ", section)[1:]:
        head, _, body = line.partition(":")
        words = re.findall(r"`([^`]+)`", body.split("\n\n")[0])
        group = "" if head.strip() == "top level" else head.strip().strip("`").rstrip("/")
        assert group not in layout, "{} listed twice".format(head)
        layout[group] = words
    return layout, section


def test_layout_list_matches_the_package_tree():
    layout, section = readme_layout()
    tree = package_tree()
    assert sorted(layout) == sorted(tree), "README layout groups vs package"
    for group, words in layout.items():
        prefix = "changenet_trt." + (group + "." if group else "")
        modules = [w for w in words if w in tree[group]]
        assert sorted(modules) == tree[group], "README layout of {!r} vs its modules".format(group or "top level")
        current = None
        for word in words:  # any other word is a name defined by the module listed before it
            if word in tree[group]:
                current = importlib.import_module(prefix + word)
            else:
                assert current is not None and hasattr(current, word), "{}: {!r}".format(group, word)
    for folder in re.findall(r"`([a-z_]+)/`", section.split("and next to it")[1]):
        assert os.path.isdir(os.path.join(ROOT, folder)), folder


#: distribution name -> the module it provides, where the two differ
IMPORT_NAMES = {"opencv-python-headless": "cv2"}


def test_every_required_dependency_is_imported_by_the_package():
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as handle:
        text = handle.read()
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.MULTILINE | re.DOTALL).group(1)
    required = [re.match(r"[A-Za-z0-9_.-]+", d).group(0) for d in re.findall(r'"([^"]+)"', block)]
    assert "numpy" in required
    imported = set()
    for folder, _, files in os.walk(PACKAGE_DIR):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(folder, name), encoding="utf-8") as handle:
                    tree = ast.parse(handle.read())
                for node in ast.walk(tree):
                    if isinstance(node, ast.Import):
                        imported |= {a.name.split(".")[0] for a in node.names}
                    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                        imported.add(node.module.split(".")[0])
    unused = [d for d in required if IMPORT_NAMES.get(d, d.replace("-", "_")) not in imported]
    assert not unused, "declared but never imported (move to an extra): {}".format(unused)
