"""Compile the C/C++ files of one extension in parallel while a setuptools build runs.

distutils compiles an extension's sources one after the other; pycuda's ``_driver`` extension
has many, so its source build takes minutes on one core. Put this directory first on
PYTHONPATH for the build (scripts/gpu-check.sh does, with ``pip install --no-build-isolation``)
and ``CCompiler.compile`` runs ``CHANGENET_BUILD_JOBS`` (default: every CPU) compiler processes
at once. It only changes the order of independent compiler calls, never their arguments.
"""

import os
from concurrent.futures import ThreadPoolExecutor


def _parallel(original):
    def compile(self, sources, output_dir=None, macros=None, include_dirs=None, debug=0, extra_preargs=None,
                extra_postargs=None, depends=None):
        macros, objects, extra_postargs, pp_opts, build = self._setup_compile(
            output_dir, macros, include_dirs, sources, depends, extra_postargs)
        cc_args = self._get_cc_args(pp_opts, debug, extra_preargs)

        def one(obj):
            if obj in build:  # objects that are up to date are not in ``build``
                src, ext = build[obj]
                self._compile(obj, src, ext, cc_args, extra_postargs, pp_opts)

        jobs = int(os.environ.get("CHANGENET_BUILD_JOBS") or os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=max(jobs, 1)) as pool:
            list(pool.map(one, objects))  # list(): re-raise the first compiler error
        return objects

    compile.parallel = True
    compile.serial = original
    return compile


def _patch(module_name):
    try:
        module = __import__(module_name, fromlist=["CCompiler"])
    except ImportError:
        return
    compiler = module.CCompiler
    if not getattr(compiler.compile, "parallel", False):
        compiler.compile = _parallel(compiler.compile)


for _name in ("setuptools._distutils.ccompiler", "distutils.ccompiler"):
    _patch(_name)
