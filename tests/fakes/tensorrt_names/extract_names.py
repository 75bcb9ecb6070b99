#!/usr/bin/env python3
"""Extract the names the real ``tensorrt`` Python module binds, from PyPI's bindings wheel.

Usage (needs network access to PyPI; run by hand when moving to a new TensorRT release)::

    python tests/fakes/tensorrt_names/extract_names.py --version 10.3.0 \
        -o tests/fakes/tensorrt_names/names-10.x.txt

It downloads ``tensorrt-cu12-bindings==VERSION`` (about 1 MB, no CUDA needed) into a
temporary folder and reads the compiled module's NUL-terminated strings: pybind11 keeps
every bound name (classes, methods, properties, enum members, argument names) as a C string.
Three rules make the list:

1. every string that is a whole Python identifier (mangled C++ symbols excluded);
2. a tail of such a string (or the identifier that ends a longer string) when the module's own documentation names it (``:ivar x:``,
   ``:func:`x```, ``X.x``, a ``<Class>Doc::x`` docstring symbol) -- the linker merges a
   string literal into a longer one that ends with it ("set_output_type" lives inside
   "reset_output_type");
3. an UPPER_CASE tail after ``_`` of an UPPER_CASE string (enum members merged the same way,
   e.g. ``INPUT`` inside ``CONDITIONAL_INPUT``);

plus the names the wheel's pure-Python ``__init__.py`` defines (``nptype``, ``volume``...).
The list is flat: a name in it is bound somewhere in the module, not necessarily on the
class a caller uses it on.
"""

import argparse
import ast
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from typing import Iterable, Set

IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
TOKEN = r"[A-Za-z_][A-Za-z0-9_]*"
DOC_REF = re.compile(
    r":(?:ivar|func|attr|class|meth|arg)[:\s`]*~?((?:" + TOKEN + r"\.)*" + TOKEN + r")"
    r"|\.(" + TOKEN + r")\b|`(" + TOKEN + r")(?:\(\))?`"
)
DOC_SYMBOL = re.compile(r"[A-Za-z_0-9]+DocL?(\d+)")
UPPER = re.compile(r"[A-Z][A-Z0-9_]*\Z")
TRAILING = re.compile(r"(?<![A-Za-z0-9_])" + TOKEN + r"\Z")


def c_strings(blob: bytes) -> Iterable[str]:
    for raw in blob.split(b"\x00"):
        if raw:
            yield raw.decode("latin-1")


def names_from_module(blob: bytes) -> Set[str]:
    strings = list(c_strings(blob))
    whole = {s for s in strings if IDENT.match(s) and not s.startswith("_Z")}
    documented: Set[str] = set()
    for s in strings:
        if s.startswith("_ZN8tensorrt"):
            for m in DOC_SYMBOL.finditer(s):
                length = int(m.group(1))
                documented.add(s[m.end(1): m.end(1) + length])
        elif not IDENT.match(s):
            for m in DOC_REF.finditer(s):
                for group in m.groups():
                    if group:
                        documented.update(group.split("."))
    # identifiers at the end of longer strings ("nvinfer1::DataType") are candidates too
    trailing = {m.group(0) for s in strings if not IDENT.match(s) and not s.startswith("_Z")
                for m in [TRAILING.search(s)] if m}
    names = set(whole)
    for s in whole | trailing:
        for i in range(0 if s in trailing else 1, len(s)):
            tail = s[i:]
            if len(tail) < 3 or not IDENT.match(tail) or tail in names:
                continue
            if tail in documented:
                names.add(tail)
            elif i > 0 and UPPER.match(s) and s[i - 1] == "_" and UPPER.match(tail) and not tail.startswith("_"):
                names.add(tail)
    return names


def names_from_init(source: str) -> Set[str]:
    names: Set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    names.add(target.id)
                elif isinstance(target, ast.Attribute):
                    names.add(target.attr)
    return names


def extract(wheel_path: str) -> Set[str]:
    with zipfile.ZipFile(wheel_path) as wheel:
        modules = [n for n in wheel.namelist() if re.search(r"/tensorrt[^/]*\.(so|pyd)$", n)]
        inits = [n for n in wheel.namelist() if n.endswith("/__init__.py")]
        if not modules:
            raise SystemExit("no compiled tensorrt module in {}".format(wheel_path))
        names = names_from_module(wheel.read(modules[0]))
        for init in inits:
            names |= names_from_init(wheel.read(init).decode("utf-8"))
    return names


def download(version: str, dest: str) -> str:
    subprocess.check_call(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
         "tensorrt-cu12-bindings=={}".format(version), "-d", dest]
    )
    wheels = [f for f in os.listdir(dest) if f.endswith(".whl")]
    if len(wheels) != 1:
        raise SystemExit("expected one wheel in {}, found {}".format(dest, wheels))
    return os.path.join(dest, wheels[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", default="10.3.0", help="tensorrt-cu12-bindings version (default: 10.3.0)")
    parser.add_argument("--wheel", help="use this already downloaded wheel instead of pip download")
    parser.add_argument("-o", "--out", required=True, help="names file to write")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or download(args.version, tmp)
        with open(wheel, "rb") as handle:
            digest = hashlib.sha256(handle.read()).hexdigest()
        names = extract(wheel)
        with open(args.out, "w") as out:
            out.write("# Names bound by the real TensorRT Python module (one per line), extracted by\n")
            out.write("# tests/fakes/tensorrt_names/extract_names.py from PyPI's wheel\n")
            out.write("# {} (sha256 {}).\n".format(os.path.basename(wheel), digest))
            out.write("# version: {}\n".format(args.version))
            for name in sorted(names):
                out.write(name + "\n")
    print("wrote {} names to {}".format(len(names), args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
