"""Helpers of the `tao` tier: CLI runs in a capped child process, pairs, ONNX Runtime, SQNR."""

import os
import resource
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# No tier step may need more; the bound for the memory-heavy steps is 8 GB.
ADDRESS_SPACE_CAP = 12 << 30


class CliRun:
    """Exit code, output, peak resident memory (bytes) and CPU time (user + system seconds) of one
    `changenet-trt` child process."""

    def __init__(self, returncode, out, err, peak_rss, cpu_s=0.0):
        self.returncode, self.out, self.err, self.peak_rss, self.cpu_s = returncode, out, err, peak_rss, cpu_s

    def __repr__(self):
        return "exit {} (peak RSS {:.2f} GB, {:.0f} s CPU)\n--- stdout\n{}\n--- stderr\n{}".format(
            self.returncode, self.peak_rss / 1e9, self.cpu_s, self.out[-3000:], self.err[-3000:])


def run_cli(args, cwd, cap=ADDRESS_SPACE_CAP, timeout=900):
    """Run `changenet-trt ARGS` as a child of this interpreter under an address-space cap; a child
    still running after `timeout` seconds is killed (exit -9)."""

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    out_path, err_path = os.path.join(str(cwd), "cli.out"), os.path.join(str(cwd), "cli.err")
    with open(out_path, "w") as out, open(err_path, "w") as err:
        child = subprocess.Popen([sys.executable, "-m", "changenet_trt.cli"] + [str(a) for a in args],
                                 cwd=str(cwd), stdout=out, stderr=err, preexec_fn=limit, env=env)
        deadline = time.monotonic() + timeout
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        while pid == 0:
            if time.monotonic() > deadline:
                child.kill()
                pid, status, usage = os.wait4(child.pid, 0)
                break
            time.sleep(0.2)
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        child.returncode = os.waitstatus_to_exitcode(status)
    with open(out_path) as out, open(err_path) as err:
        return CliRun(child.returncode, out.read(), err.read(), usage.ru_maxrss * 1024,
                      usage.ru_utime + usage.ru_stime)


def random_pairs(count, seed):
    """`count` normalised-image-like (sample, golden) float32 arrays [count, 3, 512, 128]."""
    rng = np.random.default_rng(seed)
    shape = (count, 3, 512, 128)
    return tuple(((rng.random(shape) - 0.45) / 0.226).astype(np.float32) for _ in range(2))


def run_onnx(path, sample, golden):
    """Raw output of the ONNX model at `path` (ONNX Runtime, CPU) on the given pairs."""
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, {"input_1": sample, "input_2": golden})[0]


def sqnr_db(reference, other):
    """Signal-to-quantisation-noise ratio of `other` against `reference`, in dB."""
    reference = np.asarray(reference, np.float64)
    noise = np.sum((reference - np.asarray(other, np.float64)) ** 2)
    return float("inf") if noise == 0 else float(10 * np.log10(np.sum(reference ** 2) / noise))
