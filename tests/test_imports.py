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
