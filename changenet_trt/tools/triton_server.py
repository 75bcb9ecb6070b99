"""Start a local ``tritonserver`` from a separate venv holding PyPI's ``nvidia-pytriton`` wheel.

That wheel bundles tritonserver (2.51 in pytriton 0.7.0) with the python backend only, needs
glibc >= 2.35 and numpy < 2, hence its own venv (``make triton-venv`` makes ``.venv-triton``).
Two traps, handled here: the python backend stub loads ``libpython3.X.so`` by name (the server
venv's ``sysconfig`` LIBDIR goes first on ``LD_LIBRARY_PATH``), and it ignores ``PYTHONPATH``
for its imports (the venv's ``bin`` goes first on ``PATH``, so the stub runs that venv's python).

Used by the tests, ``make triton-demo`` and ``benchmarks/bench_triton.py``; the server listens on
127.0.0.1 only, on free ports.
"""

import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Dict, List, Optional

from changenet_trt.errors import ChangeNetError

DEFAULT_VENV = ".venv-triton"
VENV_ENV = "CHANGENET_TRITON_VENV"
MIN_GLIBC = (2, 35)


class ServerUnavailable(ChangeNetError):
    """No local tritonserver can be started here (the reason says why)."""


def _venv_python(venv: str) -> str:
    return os.path.join(venv, "bin", "python")


def _server_query(python: str) -> Dict[str, str]:
    """Ask the server venv's python where pytriton's server, libraries and libpython are."""
    code = (
        "import importlib.util, sysconfig, sys, pathlib\n"
        "spec = importlib.util.find_spec('pytriton')\n"  # located, not imported: its deps are not installed
        "assert spec is not None, 'nvidia-pytriton is not installed'\n"
        "root = pathlib.Path(spec.origin).parent\n"
        "print(root / 'tritonserver')\n"
        "print(root.parent / 'nvidia_pytriton.libs')\n"
        "print(sysconfig.get_config_var('LIBDIR'))\n"
        "print('{}.{}'.format(*sys.version_info[:2]))\n"
    )
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise ServerUnavailable("the server venv has no nvidia-pytriton", found=proc.stderr.strip().splitlines()[-1:])
    dist, libs, libdir, version = proc.stdout.split()
    return {"dist": dist, "libs": libs, "libdir": libdir, "version": version}


def find_server(venv: Optional[str] = None) -> Dict[str, str]:
    """Locate tritonserver in the server venv (``venv``, ``$CHANGENET_TRITON_VENV`` or ``.venv-triton``).

    Returns paths: ``venv``, ``binary``, ``backends``, ``libs``, ``libdir``. Raises ServerUnavailable
    with the reason (not x86_64/aarch64 Linux, glibc too old, venv or wheel missing).
    """
    if not sys.platform.startswith("linux") or platform.machine() not in ("x86_64", "aarch64"):
        raise ServerUnavailable("PyPI's tritonserver runs on x86_64/aarch64 Linux only",
                                found="{} {}".format(sys.platform, platform.machine()))
    libc, version = platform.libc_ver()
    if libc == "glibc" and version:
        have = tuple(int(v) for v in version.split(".")[:2])
        if have < MIN_GLIBC:
            raise ServerUnavailable("nvidia-pytriton's tritonserver needs glibc >= 2.35", found="glibc " + version)
    venv = os.path.abspath(venv or os.environ.get(VENV_ENV) or DEFAULT_VENV)
    python = _venv_python(venv)
    reason = os.path.join(venv, ".unavailable")
    if os.path.exists(reason):
        with open(reason) as handle:
            raise ServerUnavailable(handle.read().strip())
    if not os.path.exists(python):
        raise ServerUnavailable("no server venv at {}".format(venv), expected="`make triton-venv` to create it")
    info = _server_query(python)
    binary = os.path.join(info["dist"], "bin", "tritonserver")
    backends = os.path.join(info["dist"], "backends")
    stub = os.path.join(backends, "python", "triton_python_backend_stub")
    if not os.path.exists(stub):
        # pytriton copies the stub of the running python into place before each start; do it once
        source = os.path.join(info["dist"], "python_backend_stubs", info["version"], "triton_python_backend_stub")
        if not os.path.exists(source):
            raise ServerUnavailable("nvidia-pytriton has no python backend stub for Python " + info["version"])
        shutil.copy(source, stub)
    return {"venv": venv, "binary": binary, "backends": backends, "libs": info["libs"], "libdir": info["libdir"]}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalTritonServer:
    """``with LocalTritonServer(repo) as server:`` a tritonserver on 127.0.0.1, ready, then stopped.

    ``server.grpc_url(name)`` / ``server.http_url(name)`` give the model URLs; ``server.log`` the
    server's output. Stopping sends SIGTERM (SIGKILL after ``stop_timeout_s``) to its process group.
    """

    def __init__(self, repository: str, venv: Optional[str] = None, ready_timeout_s: float = 60.0,
                 stop_timeout_s: float = 20.0, extra_args: Optional[List[str]] = None) -> None:
        self.repository = os.path.abspath(repository)
        self.paths = find_server(venv)
        self.ready_timeout_s = ready_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.extra_args = list(extra_args or [])
        self.grpc_port = self.http_port = self.metrics_port = 0
        self.process: Optional[subprocess.Popen] = None
        self._log_file = None

    def grpc_url(self, model: str) -> str:
        return "grpc://127.0.0.1:{}/{}".format(self.grpc_port, model)

    def http_url(self, model: str) -> str:
        return "http://127.0.0.1:{}/{}".format(self.http_port, model)

    @property
    def log(self) -> str:
        if self._log_file is None:
            return ""
        self._log_file.flush()
        with open(self._log_file.name, errors="replace") as handle:
            return handle.read()

    def environment(self) -> Dict[str, str]:
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (self.paths["libdir"], self.paths["libs"], env.get("LD_LIBRARY_PATH")) if p)
        env["PATH"] = os.pathsep.join([os.path.join(self.paths["venv"], "bin"), env.get("PATH", "")])
        env.pop("PYTHONPATH", None)
        env.pop("PYTHONHOME", None)
        return env

    def start(self) -> "LocalTritonServer":
        self.grpc_port, self.http_port, self.metrics_port = free_port(), free_port(), free_port()
        self._log_file = tempfile.NamedTemporaryFile("w+", prefix="tritonserver-", suffix=".log", delete=False)
        command = [
            self.paths["binary"], "--model-repository", self.repository,
            "--backend-directory", self.paths["backends"],
            "--http-address", "127.0.0.1", "--http-port", str(self.http_port),
            "--grpc-address", "127.0.0.1", "--grpc-port", str(self.grpc_port),
            "--metrics-address", "127.0.0.1", "--metrics-port", str(self.metrics_port),
            "--allow-metrics", "false", "--allow-gpu-metrics", "false", "--strict-readiness", "true",
        ] + self.extra_args
        self.process = subprocess.Popen(command, stdout=self._log_file, stderr=subprocess.STDOUT,
                                        env=self.environment(), start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        url = "http://127.0.0.1:{}/v2/health/ready".format(self.http_port)
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServerUnavailable("tritonserver exited with code {} while starting".format(self.process.returncode),
                                        found=self.log.strip().splitlines()[-5:])
            try:
                with urllib.request.urlopen(url, timeout=1.0) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise ServerUnavailable("tritonserver was not ready within {:g} s".format(self.ready_timeout_s),
                                found=self.log.strip().splitlines()[-5:])

    def stop(self) -> Optional[int]:
        """Stop the server (SIGTERM, then SIGKILL); return its exit code."""
        code = None
        if self.process is not None:
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGTERM)
                try:
                    self.process.wait(self.stop_timeout_s)
                except subprocess.TimeoutExpired:
                    os.killpg(self.process.pid, signal.SIGKILL)
                    self.process.wait()
            code = self.process.returncode
        if self._log_file is not None:
            self._log_file.close()
        return code

    def __enter__(self) -> "LocalTritonServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        if self._log_file is not None:
            try:
                os.unlink(self._log_file.name)
            except OSError:
                pass
