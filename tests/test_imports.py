"""The import rule (docs/design.md, "Imports"), checked on the package's sources with ``ast``:

* every import statement sits at the top of its module (``if TYPE_CHECKING:`` blocks included),
  never inside a function, so signatures can name first-party types and a missing hard
  dependency fails at import, not in the middle of a run;
* an import statement names only the standard library, the package, or a core dependency
  (pyproject.toml's ``dependencies``); the optional modules (TensorRT and its runtimes, pycuda,
  tritonclient) are reached only through ``changenet_trt.errors.optional_import``, the one
  lazy-import helper, so every module imports on a CPU-only install;
* the layers import each other without a cycle, and only ``gpu/`` reaches TensorRT or pycuda.
"""

import ast
import os
import pkgutil
import subprocess
import sys
import types

import pytest

import changenet_trt
from changenet_trt.errors import DependencyError, optional_import

from helpers import REPO_ROOT

PACKAGE_DIR = os.path.dirname(changenet_trt.__file__)
#: the modules a CPU-only install lacks: only optional_import may import them
OPTIONAL_MODULES = ("tensorrt", "tensorrt_lean", "tensorrt_lean_bindings", "tensorrt_dispatch",
                    "tensorrt_dispatch_bindings", "pycuda", "tritonclient")
GPU_BINDINGS = ("tensorrt", "tensorrt_lean", "tensorrt_lean_bindings", "tensorrt_dispatch",
                "tensorrt_dispatch_bindings", "tensorrt_lean_libs", "pycuda")
#: pyproject.toml's core dependencies -> the names they are imported by
CORE_DEPENDENCIES = {"numpy": ("numpy",), "omegaconf": ("omegaconf",), "onnx": ("onnx", "google"),
                     "onnxruntime": ("onnxruntime",), "packaging": ("packaging",),
                     "opencv-python-headless": ("cv2",), "tqdm": ("tqdm",)}
# (onnx requires protobuf, whose text format parses Triton's config.pbtxt: "google" comes with onnx)
#: imports allowed inside a function: {(file relative to the package, module): why}; none today
LAZY_IMPORTS = {}


def all_modules():
    names = ["changenet_trt"]
    for info in pkgutil.walk_packages([PACKAGE_DIR], prefix="changenet_trt."):
        names.append(info.name)
    return names


def package_sources():
    """(path relative to the package, parsed tree) of every package module."""
    for root, _, files in os.walk(PACKAGE_DIR):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(root, name)
                with open(path) as handle:
                    yield os.path.relpath(path, PACKAGE_DIR), ast.parse(handle.read(), path)


def _is_type_checking(test):
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _top_imports(tree):
    """The import statements at the top of a module: in its body or in an ``if TYPE_CHECKING:``."""
    found = []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            found += [n for n in node.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    return found


def _imported_names(node):
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    return ["." * node.level + (node.module or "")]


def _enclosing(tree):
    """{id(node): name of the function or class around it} for every node of ``tree``."""
    where = {}

    def visit(node, scope):
        for child in ast.iter_child_nodes(node):
            where[id(child)] = scope
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) else scope
            visit(child, inner)

    visit(tree, "the module body")
    return where


def _helper_calls(tree):
    """(line, function called, first argument) of each call that imports a module by name."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__", "find_spec", "optional_import"):
                arg = node.args[0] if node.args else None
                value = arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else None
                yield node.lineno, called, value


def test_every_module_imports_without_the_optional_modules():
    # Setting sys.modules[name] = None makes `import name` raise ImportError, exactly as on a
    # machine without the package; run in a fresh interpreter so nothing is cached.
    blocked = OPTIONAL_MODULES + ("pycuda.driver", "pycuda.autoprimaryctx", "pycuda.autoinit", "tritonclient.grpc",
                                 "tritonclient.http")
    code = (
        "import sys\n"
        "for name in {!r}:\n"
        "    sys.modules[name] = None\n"
        "import importlib\n"
        "for name in {!r}:\n"
        "    importlib.import_module(name)\n"
        "loaded = [m for m in sys.modules if sys.modules[m] is not None]\n"
        "assert not [m for m in loaded if m.split('.')[0] in {!r}], loaded\n"
        "print('ok')\n"
    ).format(blocked, all_modules(), OPTIONAL_MODULES)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_imports_sit_at_the_top_of_their_module():
    offenders = []
    for rel, tree in package_sources():
        top = {id(node) for node in _top_imports(tree)}
        scope = _enclosing(tree)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top:
                for name in _imported_names(node):
                    if (rel, name) not in LAZY_IMPORTS:
                        offenders.append("changenet_trt/{}:{}: import of {} inside {} (move it to the top; "
                                         "TYPE_CHECKING where a cycle threatens)".format(
                                             rel, node.lineno, name, scope[id(node)]))
    assert not offenders, "\n".join(offenders)


def test_lazy_import_exceptions_are_still_needed():
    found = set()
    for rel, tree in package_sources():
        top = {id(node) for node in _top_imports(tree)}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top:
                found.update((rel, name) for name in _imported_names(node))
    assert set(LAZY_IMPORTS) <= found, sorted(set(LAZY_IMPORTS) - found)


def test_core_dependencies_match_pyproject():
    with open(os.path.join(REPO_ROOT, "pyproject.toml")) as handle:
        text = handle.read()
    block = text.split("\ndependencies = [", 1)[1].split("]", 1)[0]
    declared = {line.strip().strip('",').split(">")[0].split("=")[0].split("<")[0].strip()
                for line in block.splitlines() if line.strip()}
    assert declared == set(CORE_DEPENDENCIES)


@pytest.mark.skipif(sys.version_info < (3, 10), reason="needs sys.stdlib_module_names (Python >= 3.10)")
def test_import_statements_name_the_standard_library_the_package_or_a_core_dependency():
    allowed = set(sys.stdlib_module_names) | {"changenet_trt"} | {m for ms in CORE_DEPENDENCIES.values() for m in ms}
    offenders = []
    for rel, tree in package_sources():
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for name in _imported_names(node):
                    if name.startswith("."):
                        offenders.append("changenet_trt/{}:{}: relative import {} (name the package)".format(
                            rel, node.lineno, name))
                    elif name.split(".")[0] not in allowed:
                        offenders.append("changenet_trt/{}:{}: import of {} (an optional module: reach it through "
                                         "changenet_trt.errors.optional_import)".format(rel, node.lineno, name))
    assert not offenders, "\n".join(offenders)


def test_modules_are_imported_by_name_only_in_the_helper():
    offenders = []
    for rel, tree in package_sources():
        for line, called, _ in _helper_calls(tree):
            if called in ("import_module", "__import__") and rel != "errors.py":
                offenders.append("changenet_trt/{}:{}: {}() (use changenet_trt.errors.optional_import)".format(
                    rel, line, called))
    assert not offenders, "\n".join(offenders)


def test_optional_import_returns_the_module_installed_at_the_time(monkeypatch):
    # not cached: the test doubles install themselves into sys.modules and are swapped per test
    first, second = types.ModuleType("tensorrt"), types.ModuleType("tensorrt")
    monkeypatch.setitem(sys.modules, "tensorrt", first)
    assert optional_import("tensorrt", "building an engine") is first
    monkeypatch.setitem(sys.modules, "tensorrt", second)
    assert optional_import("tensorrt", "building an engine") is second
    monkeypatch.setitem(sys.modules, "tritonclient.grpc", None)  # as where the triton extra is not installed
    with pytest.raises(DependencyError) as info:
        optional_import("tritonclient.grpc", "the Triton backend")
    message = str(info.value)  # names the package to install, not its submodule
    assert "the Triton backend" in message and "'tritonclient'" in message
    assert "pip install 'changenet-trt[triton]'" in message


def test_package_never_imports_the_test_doubles():
    for root, _, files in os.walk(PACKAGE_DIR):
        for name in files:
            if name.endswith(".py"):
                text = open(os.path.join(root, name)).read()
                assert "tests.fakes" not in text and "from fakes" not in text, name


def _imports_of(path):
    """Every module name `path` imports, at any depth (lazy imports included), made absolute."""
    tree = ast.parse(open(path).read(), path)
    rel = os.path.relpath(path, os.path.dirname(PACKAGE_DIR))[:-3].split(os.sep)
    if rel[-1] == "__init__":
        rel = rel[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = rel[: len(rel) - node.level + (1 if path.endswith("__init__.py") else 0)]
                base = ".".join(anchor + ([base] if base else []))
            found.append(base)
            found += [base + "." + a.name for a in node.names]
    found += [value for _, _, value in _helper_calls(tree) if value]
    return found


def _group(module):
    """The layer a package module belongs to: its subpackage, or the top-level module itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def package_import_graph():
    """{group: {groups it imports}} over the package, excluding the package's own __init__ facade."""
    graph = {}
    for root, _, files in os.walk(PACKAGE_DIR):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(root, name)
            rel = os.path.relpath(path, os.path.dirname(PACKAGE_DIR))[:-3].replace(os.sep, ".")
            me = _group(rel.replace(".__init__", ""))
            if me is None:
                continue
            deps = graph.setdefault(me, set())
            for target in _imports_of(path):
                if target.startswith("changenet_trt."):
                    other = _group(target)
                    if other and other != me and (other in graph or os.path.exists(
                        os.path.join(PACKAGE_DIR, other)) or os.path.exists(os.path.join(PACKAGE_DIR, other + ".py"))):
                        deps.add(other)
    return graph


def test_no_import_cycle_between_subpackages_and_top_level_modules():
    graph = package_import_graph()
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack + [node, dep]))
            if dep not in state:
                visit(dep, stack + [node])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    # the graph is real: the layers that must depend on each other do
    assert "gpu" in graph["runtime"] and "runtime" in graph["api"] and "api" in graph["evaluation"]


def test_only_gpu_subpackage_reaches_tensorrt_or_pycuda():
    # an import statement, optional_import("tensorrt", ...), import_module or find_spec: all count
    offenders = []
    for root, _, files in os.walk(PACKAGE_DIR):
        for name in files:
            path = os.path.join(root, name)
            if not name.endswith(".py") or os.path.relpath(path, PACKAGE_DIR).startswith("gpu" + os.sep):
                continue
            for target in _imports_of(path):
                if target.split(".")[0] in GPU_BINDINGS:
                    offenders.append("{}: {}".format(os.path.relpath(path, PACKAGE_DIR), target))
    assert not offenders


def test_package_top_level_stays_small():
    top = sorted(n for n in os.listdir(PACKAGE_DIR) if n.endswith(".py"))
    assert len(top) <= 8, top
