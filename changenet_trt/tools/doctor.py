"""``changenet-trt doctor``: what this machine has, and proof that the stack works on it.

First the environment report (:mod:`changenet_trt.tools.machine`: every probe defensive,
including the precision path the installed TensorRT builds with), then checks, each PASS, FAIL
or SKIP:

* CPU checks (always): the reference model through ONNX Runtime equals a direct numpy
  computation of the same graph; image files are decoded and normalised exactly as the
  formula says, in RGB order; the reference model's decisions on made-up pairs, from image
  files through the whole pipeline, are right.
* CUDA checks (a GPU with pycuda; no TensorRT needed): the primary context, and pinned and
  device buffers round-tripping full and partial batches, timed with CUDA events.
* TensorRT checks (TensorRT too): build the reference model's engine, run it through the
  TensorRT runner, compare it with ONNX Runtime on the same pairs, and run a short benchmark.
  Without a GPU they are skipped with the reason; with a GPU but without TensorRT or pycuda
  they fail and say what to install, and whatever can still run does.

The exit status is 0 when every check that applies passes.
"""

import os
import shutil
import tempfile
import traceback
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import onnx
from onnx import numpy_helper

from changenet_trt import load
from changenet_trt.contract import read_contract
from changenet_trt.data.pairs import synthetic_source
from changenet_trt.data.preprocess import PRESETS, prepare_batch, prepare_image
from changenet_trt.engine.build import build_engine_file
from changenet_trt.engine.fp16_check import check_model, source_batches, write_layer_list
from changenet_trt.engine.options import BatchProfile, BuildOptions, read_layer_patterns
from changenet_trt.errors import TENSORRT_INSTALL_HINT
from changenet_trt.evaluation.validate import validate
from changenet_trt.files import write_json_report
from changenet_trt.gpu.cuda import CudaInfo, primary_context, probe_driver, pycuda_version
from changenet_trt.gpu.trt import installed_description
from changenet_trt.models.reference import build_reference_model, write_reference_model
from changenet_trt.tools.bench import BenchOptions, run_benchmark
from changenet_trt.tools.demo import make_pairs
from changenet_trt.tools.machine import NOT_FOUND, RunFn, environment, run_command

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"


@dataclass
class Check:
    """One check's outcome: ``status`` PASS/FAIL/SKIP and a one-line ``detail``."""

    name: str
    status: str
    detail: str

    @property
    def failed(self) -> bool:
        return self.status == FAIL



# -- CPU checks -----------------------------------------------------------------------------
def numpy_reference_forward(proto: Any, golden: np.ndarray, sample: np.ndarray) -> np.ndarray:
    """The reference model's graph (see :mod:`changenet_trt.models.reference`) in float64 numpy,
    with the weights read from ``proto``. ``golden``/``sample``: ``[n,3,512,128]``; returns the
    raw output (``[n]``/``[n,1]`` distance or ``[n,2]`` logits) as the ONNX model would."""
    weights = {init.name: numpy_helper.to_array(init).astype(np.float64) for init in proto.graph.initializer}
    conv_w, conv_b = weights["backbone.conv.weight"], weights["backbone.conv.bias"]

    def embed(x: np.ndarray) -> np.ndarray:
        n, c, h, w = x.shape
        x = x.astype(np.float64)
        pooled = x.reshape(n, c, h // 4, 4, w // 4, 4).mean(axis=(3, 5))
        ph, pw = pooled.shape[2], pooled.shape[3]
        padded = np.pad(pooled, ((0, 0), (0, 0), (1, 1), (1, 1)))
        conv = np.broadcast_to(conv_b[None, :, None, None], (n, conv_w.shape[0], ph, pw)).copy()
        for dy in range(3):
            for dx in range(3):
                conv += np.einsum("nchw,oc->nohw", padded[:, :, dy:dy + ph, dx:dx + pw], conv_w[:, :, dy, dx])
        relu = np.maximum(conv, 0.0)
        pooled2 = relu.reshape(n, relu.shape[1], ph // 2, 2, pw // 2, 2).mean(axis=(3, 5))
        return pooled2.reshape(n, -1)

    diff = embed(sample) - embed(golden)
    rms = np.sqrt((diff * diff).mean(axis=1, keepdims=True))
    if "head.fc.weight" not in weights:  # euclidean
        out_shape = [d.dim_value or d.dim_param for d in proto.graph.output[0].type.tensor_type.shape.dim]
        return rms if len(out_shape) == 2 else rms[:, 0]
    features = np.concatenate([rms, np.abs(diff).max(axis=1, keepdims=True)], axis=1)
    return features @ weights["head.fc.weight"] + weights["head.fc.bias"]


def _made_up_pairs(count: int) -> Tuple[List[np.ndarray], List[np.ndarray], np.ndarray]:
    return make_pairs(count, seed=7)


def check_onnxruntime_vs_numpy(workdir: str, pairs: int = 8) -> Check:
    """The reference models through the library's ONNX Runtime path vs :func:`numpy_reference_forward`."""
    golden_rgb, sample_rgb, _ = _made_up_pairs(pairs)
    worst = []
    for kind in ("learnable", "euclidean"):
        proto = build_reference_model(kind=kind)
        path = os.path.join(workdir, "doctor_reference_{}.onnx".format(kind))
        onnx.save(proto, path)
        with load(path) as clf:
            golden = np.zeros((pairs,) + tuple(clf.contract.input_shape), dtype=np.float32)
            sample = np.zeros_like(golden)
            prepare_batch(golden_rgb, golden, clf.normalization)
            prepare_batch(sample_rgb, sample, clf.normalization)
            got = clf.predict(golden, sample).raw
        want = numpy_reference_forward(proto, golden, sample)
        if got.shape != want.shape:
            return Check("onnxruntime vs numpy", FAIL, "{} output shape {} != numpy {}".format(kind, got.shape, want.shape))
        err = np.abs(got.astype(np.float64) - want)
        tol = 1e-4 + 1e-4 * np.abs(want)
        if not (err <= tol).all():
            return Check(
                "onnxruntime vs numpy",
                FAIL,
                "{} reference model differs from numpy: max |diff| {:.3g} (tolerance 1e-4 + 1e-4*|x|)".format(kind, err.max()),
            )
        worst.append("{} max |diff| {:.2g}".format(kind, err.max()))
    return Check("onnxruntime vs numpy", PASS, "reference models on {} pairs: {}".format(pairs, ", ".join(worst)))


def check_preprocessing(workdir: str) -> Check:
    """PNG written with OpenCV, read back through :func:`prepare_image`: RGB order, resize to
    512x128 and the (x/255 - mean)/std formula, in float32 and float16 buffers."""
    rng = np.random.default_rng(11)
    rgb = rng.integers(0, 256, size=(512, 128, 3), dtype=np.uint8)
    rgb[:8, :8] = (255, 0, 0)  # a red corner: R must come out high, B low
    path = os.path.join(workdir, "doctor_pixels.png")
    if not cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        return Check("preprocessing", FAIL, "OpenCV cannot write PNG files")
    small = os.path.join(workdir, "doctor_pixels_small.png")
    cv2.imwrite(small, cv2.cvtColor(rgb[::2, ::2], cv2.COLOR_RGB2BGR))
    details = []
    for preset_name, norm in sorted(PRESETS.items()):
        mean = np.asarray(norm.mean, dtype=np.float64)[:, None, None]
        std = np.asarray(norm.std, dtype=np.float64)[:, None, None]
        want = (rgb.transpose(2, 0, 1).astype(np.float64) / 255.0 - mean) / std
        for dtype, tol in ((np.float32, 1e-5), (np.float16, 4e-3)):
            dst = np.zeros((3, 512, 128), dtype=dtype)
            prepare_image(path, dst, norm)
            err = float(np.abs(dst.astype(np.float64) - want).max())
            if err > tol:
                return Check(
                    "preprocessing",
                    FAIL,
                    "{} {} normalisation differs from (x/255-mean)/std by {:.3g} (tolerance {:g})".format(
                        preset_name, np.dtype(dtype).name, err, tol
                    ),
                )
        details.append(preset_name)
    dst = np.zeros((3, 512, 128), dtype=np.float32)
    prepare_image(small, dst, "tao")
    if not (dst[0, 0, 0] > 2.0 and dst[2, 0, 0] < -1.5):
        return Check("preprocessing", FAIL, "channel order is not RGB after decode and resize (red pixel read as {})".format(dst[:, 0, 0]))
    return Check("preprocessing", PASS, "PNG decode, RGB order, resize, {} normalisation (float32 and float16)".format(
        " and ".join(details)))


def check_decisions(workdir: str, pairs: int = 8) -> Check:
    """The whole CPU pipeline from image files: the reference model decides made-up pairs right."""
    golden_rgb, sample_rgb, truth = _made_up_pairs(pairs)
    golden_paths, sample_paths = [], []
    for i, (g, s) in enumerate(zip(golden_rgb, sample_rgb)):
        golden_paths.append(os.path.join(workdir, "doctor_pair{}_golden.png".format(i)))
        sample_paths.append(os.path.join(workdir, "doctor_pair{}_sample.png".format(i)))
        cv2.imwrite(golden_paths[-1], cv2.cvtColor(g, cv2.COLOR_RGB2BGR))
        cv2.imwrite(sample_paths[-1], cv2.cvtColor(s, cv2.COLOR_RGB2BGR))
    model = write_reference_model(os.path.join(workdir, "doctor_reference_learnable.onnx"), kind="learnable")
    with load(model, batch_size=4) as clf:
        result = clf.predict(golden_paths, sample_paths)
    wrong = int((result.defects != truth).sum())
    if wrong:
        return Check("pipeline decisions", FAIL, "{} of {} made-up pairs decided wrongly at cutoff {}".format(
            wrong, pairs, result.cutoff))
    return Check("pipeline decisions", PASS, "{} pairs from PNG files, batches of 4: all {} defects and {} passes right".format(
        pairs, int(truth.sum()), int((~truth).sum())))


CPU_CHECKS = (check_onnxruntime_vs_numpy, check_preprocessing, check_decisions)


def _guarded(check: Callable[..., Check], name: str, *args: Any, **kwargs: Any) -> Check:
    """Run a check; an exception is that check's FAIL (with its one-line cause), not a crash."""
    try:
        return check(*args, **kwargs)
    except Exception as exc:
        frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        where = " at {}:{}".format(os.path.basename(frame.filename), frame.lineno) if frame else ""
        return Check(name, FAIL, "{}: {}{}".format(type(exc).__name__, exc, where))


# -- report -----------------------------------------------------------------------------------
@dataclass
class DoctorReport:
    environment: List[Tuple[str, str]]
    checks: List[Check]

    @property
    def ok(self) -> bool:
        return not any(c.failed for c in self.checks)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "environment": dict(self.environment),
            "checks": [asdict(c) for c in self.checks],
            "ok": self.ok,
        }


def format_report(report: DoctorReport) -> List[str]:
    width = max(len(label) for label, _ in report.environment)
    lines = ["environment"]
    lines += ["  {:<{w}}  {}".format(label, value, w=width) for label, value in report.environment]
    lines.append("")
    lines.append("checks")
    name_width = max(len(c.name) for c in report.checks) if report.checks else 0
    lines += ["  {}  {:<{w}}  {}".format(c.status, c.name, c.detail, w=name_width) for c in report.checks]
    counts = {status: sum(1 for c in report.checks if c.status == status) for status in (PASS, FAIL, SKIP)}
    lines.append("")
    lines.append("{} passed, {} failed, {} skipped: {}".format(
        counts[PASS], counts[FAIL], counts[SKIP],
        "every check that applies passed" if report.ok else "FAILED"))
    return lines


def run_doctor(
    workdir: Optional[str] = None,
    device: bool = True,
    bench_seconds: float = 1.0,
    root: str = "/",
    run: RunFn = run_command,
    cuda: Optional[CudaInfo] = None,
) -> DoctorReport:
    """Probe the environment and run every check. ``workdir`` keeps the files the checks write
    (default: a temporary folder, removed afterwards). ``device=False`` skips the GPU checks."""
    cuda = probe_driver() if cuda is None else cuda
    env = environment(root, run, cuda)
    own_dir = workdir is None
    work = tempfile.mkdtemp(prefix="changenet-doctor-") if own_dir else os.fspath(workdir)
    os.makedirs(work, exist_ok=True)
    try:
        checks = [
            _guarded(check_onnxruntime_vs_numpy, "onnxruntime vs numpy", work),
            _guarded(check_preprocessing, "preprocessing", work),
            _guarded(check_decisions, "pipeline decisions", work),
        ]
        checks += device_checks(work, cuda, enabled=device, bench_seconds=bench_seconds)
    finally:
        if own_dir:
            shutil.rmtree(work, ignore_errors=True)
    return DoctorReport(env, checks)


def write_json(report: DoctorReport, path: str) -> str:
    return write_json_report(path, report.to_dict(), what="doctor JSON report")


# -- device checks ----------------------------------------------------------------------------
CUDA_CHECKS = ("CUDA context", "CUDA copies")
TENSORRT_CHECKS = ("TensorRT engine build", "engine vs onnxruntime", "float32 layers", "benchmark")
DEVICE_CHECKS = CUDA_CHECKS + TENSORRT_CHECKS
#: pairs the device checks compare on, and the batch profile of the engines they build
DEVICE_PAIRS = 32
DEVICE_PROFILE = (1, 16, 16)


def device_checks(workdir: str, cuda: CudaInfo, enabled: bool = True, bench_seconds: float = 1.0) -> List[Check]:
    """The CUDA checks whenever pycuda works on a GPU; then build, run, compare and benchmark
    the reference engine when TensorRT is there too (or say why not)."""
    if not enabled:
        return [Check(name, SKIP, "device checks turned off (--cpu-only)") for name in DEVICE_CHECKS]
    if not cuda.gpus:
        why = "no GPU: {}".format(cuda.error or "the CUDA driver reports no device")
        return [Check(name, SKIP, why if i == 0 else "no GPU") for i, name in enumerate(DEVICE_CHECKS)]
    state = {"tensorrt": installed_description(), "pycuda": pycuda_version()}
    usable = {name: value != NOT_FOUND and not value.startswith("broken") for name, value in state.items()}
    checks: List[Check] = []
    if not all(usable.values()):
        what = ", ".join(["{} not installed".format(m) for m, v in state.items() if v == NOT_FOUND]
                         + ["{} fails to import".format(m) for m, v in state.items() if v.startswith("broken")])
        checks.append(Check("TensorRT and pycuda", FAIL, "a GPU is present but {} ({})".format(what, TENSORRT_INSTALL_HINT)))
    if not usable["pycuda"]:
        return checks + [Check(name, SKIP, "needs pycuda" if name in CUDA_CHECKS else "needs TensorRT and pycuda")
                         for name in DEVICE_CHECKS]
    checks.append(_guarded(check_cuda_context, "CUDA context"))
    if checks[-1].failed:
        return _skip_rest(checks, "needs a CUDA context")
    checks.append(_guarded(check_cuda_copies, "CUDA copies"))
    if not usable["tensorrt"]:
        return _skip_rest(checks, "needs TensorRT")
    return checks + _run_tensorrt_checks(workdir, bench_seconds)


def _skip_rest(checks: List[Check], why: str) -> List[Check]:
    done = {c.name for c in checks}
    return checks + [Check(name, SKIP, why) for name in DEVICE_CHECKS if name not in done]


def check_cuda_context() -> Check:
    """The primary CUDA context through pycuda (what the TensorRT runner uses)."""
    ctx = primary_context(0)
    cc = ".".join(str(v) for v in ctx.compute_capability)
    return Check("CUDA context", PASS, "{} (compute capability {}{}, {} MiB)".format(
        ctx.name, cc, ", integrated" if ctx.integrated else "", ctx.total_memory >> 20))


def check_cuda_copies(batch: int = 16, rows: int = 7) -> Check:
    """A batch of float32 pairs ``[batch, 3, 512, 128]`` pinned -> device -> pinned, whole and its
    first ``rows`` rows, on one stream; the bytes must come back unchanged. Reports the
    host-to-device rate measured with CUDA events (GB/s)."""
    ctx = primary_context(0)
    shape = (batch, 3, 512, 128)
    host_in = ctx.pinned(shape, np.float32)
    host_out = ctx.pinned(shape, np.float32)
    device = ctx.device_buffer(host_in.nbytes)
    stream = ctx.stream()
    start, mid = ctx.event(), ctx.event()
    try:
        assert host_in.array is not None and host_out.array is not None
        host_in.array[...] = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
        host_out.array[...] = 0
        start.record(stream)
        device.upload(host_in.array, stream)
        mid.record(stream)
        device.download(host_out.array, stream)
        stream.synchronize()
        h2d_ms = mid.ms_since(start)
        whole = bool(np.array_equal(host_out.array, host_in.array))
        host_in.array[:rows] += 1.0
        host_out.array[...] = 0
        device.upload(host_in.array[:rows], stream)
        device.download(host_out.array[:rows], stream)
        stream.synchronize()
        partial = bool(np.array_equal(host_out.array[:rows], host_in.array[:rows])
                       and not host_out.array[rows:].any())
    finally:
        for item in (start, mid):
            item.close()
        stream.close()
        for buffer in (device, host_in, host_out):
            buffer.free()
    if not (whole and partial):
        return Check("CUDA copies", FAIL, "bytes changed on the way: whole batch {}, first {} rows {}".format(
            "ok" if whole else "differs", rows, "ok" if partial else "differ"))
    rate = "{:.1f} GB/s".format(host_in.nbytes / (h2d_ms * 1e6)) if h2d_ms > 0 else "not measurable"
    return Check("CUDA copies", PASS, "{} MiB pinned <-> device unchanged (whole and first {} rows); host-to-device "
                 "{}".format(host_in.nbytes >> 20, rows, rate))


def _build(workdir: str, onnx_path: str, name: str, fp32_layers: Sequence[str] = ()) -> Any:
    options = BuildOptions(
        model=onnx_path,
        output=os.path.join(workdir, name + ".engine"),
        precision="fp16",
        profile=BatchProfile(*DEVICE_PROFILE),
        fp32_layers=list(fp32_layers),
        engines_dir=workdir,
        progress=False,
    )
    return build_engine_file(options)


def _compare(workdir: str, engine: str, onnx_path: str) -> Any:
    return validate(engine, onnx_path, lambda contract, norm: synthetic_source(
        DEVICE_PAIRS, contract.input_shape, norm, seed=1), backend="tensorrt")


def _run_tensorrt_checks(workdir: str, bench_seconds: float) -> List[Check]:
    """Build the reference engine (FP16, batch 1..16), run it against ONNX Runtime, check that
    ``--fp32-layers`` from fp16-check keeps a planted overflow out of FP16, benchmark at 16."""
    checks: List[Check] = []

    onnx_path = write_reference_model(os.path.join(workdir, "doctor_device_reference.onnx"), kind="learnable")
    built: List[Any] = []

    def build_check() -> Check:
        result = _build(workdir, onnx_path, "doctor_reference_fp16")
        built.append(result)
        meta = result.metadata
        return Check("TensorRT engine build", PASS, "FP16, batch {}..{}, TensorRT {}, {:.1f} s: {}".format(
            DEVICE_PROFILE[0], DEVICE_PROFILE[2], meta.trt_version, result.seconds,
            result.engine_path))

    checks.append(_guarded(build_check, "TensorRT engine build"))
    if checks[-1].failed:
        return [c for c in _skip_rest(checks, "needs the engine") if c.name in TENSORRT_CHECKS]
    engine = built[0].engine_path

    def compare_check() -> Check:
        report = _compare(workdir, engine, onnx_path)
        detail = "{} synthetic pairs: max |diff| {:.3g} (raw), {:.3g} (score), {} flip(s) at cutoff {:g}".format(
            report.pairs, report.raw.abs_max, report.score.abs_max, report.flips.count, report.flips.cutoff)
        return Check("engine vs onnxruntime", PASS if report.passed else FAIL,
                     detail if report.passed else detail + ": " + "; ".join(report.failures))

    checks.append(_guarded(compare_check, "engine vs onnxruntime"))

    def fp32_check() -> Check:
        model = write_reference_model(os.path.join(workdir, "doctor_fp16_overflow.onnx"), kind="learnable",
                                      fp16_overflow=True)
        contract = read_contract(model)
        source = synthetic_source(8, contract.input_shape, contract.preprocess or "tao", seed=2)
        report = check_model(model, source_batches(source, 4, contract.input_shape), contract=contract)
        if not report.layers:
            return Check("float32 layers", FAIL, "fp16-check found no overflow in the planted model")
        listing = write_layer_list(report, os.path.join(workdir, "doctor_fp32_layers.txt"))
        result = _build(workdir, model, "doctor_fp16_overflow_fp32layers", read_layer_patterns(["@" + listing]))
        compared = _compare(workdir, result.engine_path, model)
        names = ", ".join(layer.layer for layer in report.layers)
        if not compared.passed:
            return Check("float32 layers", FAIL, "planted overflow still breaks the engine with {} in FP32: {}".format(
                names, "; ".join(compared.failures)))
        return Check("float32 layers", PASS, "fp16-check flagged {}; engine built with them in FP32 matches "
                     "onnxruntime (max |diff| {:.3g}, {} flips)".format(names, compared.raw.abs_max, compared.flips.count))

    checks.append(_guarded(fp32_check, "float32 layers"))

    def bench_check() -> Check:
        result = run_benchmark(engine, BenchOptions(batch=DEVICE_PROFILE[2], duration_s=bench_seconds,
                                                    warmup_ms=200.0, iterations=10), backend="tensorrt")
        if not (result.fps > 0 and np.isfinite(result.fps)):
            return Check("benchmark", FAIL, "no throughput measured ({} queries)".format(len(result.timed)))
        latency = result.stats("latency")
        return Check("benchmark", PASS, "batch {}: {:.1f} pairs/s, latency median {:.3g} ms ({} queries, {:g} s)".format(
            result.batch, result.fps, latency.median, len(result.timed), bench_seconds))

    checks.append(_guarded(bench_check, "benchmark"))
    return checks

