"""Every package module imports on a CPU-only install (tensorrt and pycuda absent)."""

import ast
import os
import pkgutil
import subprocess
import sys

import changenet_trt

PACKAGE_DIR = os.path.dirname(changenet_trt.__file__)


def all_modules():
    names = ["changenet_trt"]
    for info in pkgutil.walk_packages([PACKAGE_DIR], prefix="changenet_trt."):
        names.append(info.name)
    return names


def test_every_module_imports_without_tensorrt_or_pycuda():
    # Setting sys.modules[name] = None makes `import name` raise ImportError, exactly as on a
    # machine without the package; run in a fresh interpreter so nothing is cached.
    code = (
        "import sys\n"
        "for name in ('tensorrt', 'pycuda', 'pycuda.driver', 'pycuda.autoprimaryctx', 'pycuda.autoinit'):\n"
        "    sys.modules[name] = None\n"
        "import importlib\n"
        "for name in {!r}:\n"
        "    importlib.import_module(name)\n"
        "assert 'tensorrt' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "print('ok')\n"
    ).format(all_modules())
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_no_module_imports_tensorrt_or_pycuda_at_top_level():
    offenders = []
    for root, _, files in os.walk(PACKAGE_DIR):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(root, name)
            tree = ast.parse(open(path).read(), path)
            for node in tree.body:  # module level only
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                    if any(m.split(".")[0] in ("tensorrt", "pycuda") for m in mods):
                        offenders.append(path)
    assert not offenders


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


def test_only_gpu_subpackage_imports_tensorrt_or_pycuda():
    offenders = []
    for root, _, files in os.walk(PACKAGE_DIR):
        for name in files:
            path = os.path.join(root, name)
            if not name.endswith(".py") or os.path.relpath(path, PACKAGE_DIR).startswith("gpu" + os.sep):
                continue
            for target in _imports_of(path):
                if target.split(".")[0] in ("tensorrt", "tensorrt_lean", "tensorrt_dispatch", "pycuda"):
                    offenders.append("{}: {}".format(os.path.relpath(path, PACKAGE_DIR), target))
    assert not offenders


def test_package_top_level_stays_small():
    top = sorted(n for n in os.listdir(PACKAGE_DIR) if n.endswith(".py"))
    assert len(top) <= 8, top


def test_no_module_outside_gpu_imports_tensorrt_or_pycuda_by_name():
    # importlib.import_module("tensorrt") would go around the rule above: a call that imports a
    # module by name (import_module, __import__, find_spec) names no GPU binding outside gpu/
    offenders = []
    for root, _, files in os.walk(PACKAGE_DIR):
        for name in files:
            path = os.path.join(root, name)
            if not name.endswith(".py") or os.path.relpath(path, PACKAGE_DIR).startswith("gpu" + os.sep):
                continue
            for node in ast.walk(ast.parse(open(path).read(), path)):
                if not isinstance(node, ast.Call):
                    continue
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if called not in ("import_module", "__import__", "find_spec"):
                    continue
                for arg in node.args[:1]:
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.split(".")[0] in (
                            "tensorrt", "tensorrt_lean", "tensorrt_dispatch", "pycuda"):
                        offenders.append("{}:{}: {}".format(os.path.relpath(path, PACKAGE_DIR), node.lineno, arg.value))
    assert not offenders
