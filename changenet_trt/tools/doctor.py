"""``changenet-trt doctor``: what this machine has, and proof that the stack works on it.

First an environment report (every probe is defensive: a missing library, file or command
reads "not found", never an exception), including the precision path the installed TensorRT
builds with (:func:`precision_path`), then checks, each PASS, FAIL or SKIP:

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

import ctypes
import importlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from packaging.version import InvalidVersion, Version

NOT_FOUND = "not found"
PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"

# L4T release -> JetPack release (NVIDIA's JetPack archive); other releases print the L4T only.
L4T_TO_JETPACK = {
    "32.7.1": "4.6.1",
    "32.7.2": "4.6.2",
    "32.7.3": "4.6.3",
    "32.7.4": "4.6.4",
    "32.7.5": "4.6.5",
    "35.1.0": "5.0.2",
    "35.2.1": "5.1",
    "35.3.1": "5.1.1",
    "35.4.1": "5.1.2",
    "35.5.0": "5.1.3",
    "35.6.0": "5.1.4",
    "36.2.0": "6.0 DP",
    "36.3.0": "6.0",
    "36.4.0": "6.1",
    "36.4.3": "6.2",
    # JetPack 7 (NVIDIA's JetPack downloads pages): 7.0 = Jetson Linux 38.2/38.2.1, 7.1 = 38.4
    # (Thor); 7.2 = 39.2 (Orin and Thor; its developer guide is docs.nvidia.com/jetson/archives/r39.2)
    "38.2.0": "7.0",
    "38.2.1": "7.0",
    "38.4.0": "7.1",
    "39.2.0": "7.2",
}
#: L4T major release -> JetPack major, for a point release the table above does not list
L4T_MAJOR_TO_JETPACK = {"32": "4", "34": "5", "35": "5", "36": "6", "38": "7", "39": "7"}

# cuDeviceGetAttribute codes (cuda.h)
_CU_ATTR_INTEGRATED = 18
_CU_ATTR_CC_MAJOR = 75
_CU_ATTR_CC_MINOR = 76

RunFn = Callable[[Sequence[str]], Optional[str]]


@dataclass
class GpuInfo:
    """One CUDA device as the driver reports it."""

    index: int
    name: str
    compute_capability: str  # "8.7"
    memory_mib: int
    integrated: bool


@dataclass
class CudaInfo:
    """What libcuda says: driver version ("12.2") and devices; ``error`` when it could not say."""

    driver: Optional[str] = None
    gpus: List[GpuInfo] = field(default_factory=list)
    error: Optional[str] = None


@dataclass
class Check:
    """One check's outcome: ``status`` PASS/FAIL/SKIP and a one-line ``detail``."""

    name: str
    status: str
    detail: str

    @property
    def failed(self) -> bool:
        return self.status == FAIL


# -- environment ----------------------------------------------------------------------------
def run_command(argv: Sequence[str], timeout: float = 10.0) -> Optional[str]:
    """stdout of a command, or ``None`` when it is missing, fails or hangs."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(
            list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.decode("utf-8", "replace")


def module_version(name: str, attribute: str = "__version__") -> str:
    """``module.<attribute>`` or "not found"/"broken (<error>)"; never raises."""
    try:
        module = importlib.import_module(name)
    except ImportError:
        return NOT_FOUND
    except Exception as exc:  # a module that is there but fails to import (bad install)
        return "broken ({}: {})".format(type(exc).__name__, exc)
    return str(getattr(module, attribute, "installed (version unknown)"))


def probe_cuda(library_names: Sequence[str] = ("libcuda.so.1", "libcuda.so", "nvcuda.dll")) -> CudaInfo:
    """Ask the CUDA driver library directly (ctypes), so GPUs show even without pycuda."""
    lib = None
    for name in library_names:
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if lib is None:
        return CudaInfo(error="no CUDA driver library (libcuda): no NVIDIA driver on this machine")
    info = CudaInfo()
    try:
        version = ctypes.c_int(0)
        if lib.cuDriverGetVersion(ctypes.byref(version)) == 0 and version.value > 0:
            info.driver = "{}.{}".format(version.value // 1000, (version.value % 1000) // 10)
        status = lib.cuInit(0)
        if status != 0:
            info.error = "cuInit failed with CUDA error {} (no usable GPU, or the driver is not loaded)".format(status)
            return info
        count = ctypes.c_int(0)
        if lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
            info.error = "cuDeviceGetCount failed"
            return info
        for index in range(count.value):
            device = ctypes.c_int(0)
            if lib.cuDeviceGet(ctypes.byref(device), index) != 0:
                continue
            name = ctypes.create_string_buffer(256)
            lib.cuDeviceGetName(name, 256, device)
            values = {}
            for attr in (_CU_ATTR_CC_MAJOR, _CU_ATTR_CC_MINOR, _CU_ATTR_INTEGRATED):
                value = ctypes.c_int(0)
                lib.cuDeviceGetAttribute(ctypes.byref(value), attr, device)
                values[attr] = value.value
            memory = ctypes.c_size_t(0)
            total = getattr(lib, "cuDeviceTotalMem_v2", None) or lib.cuDeviceTotalMem
            total(ctypes.byref(memory), device)
            info.gpus.append(
                GpuInfo(
                    index=index,
                    name=name.value.decode("utf-8", "replace"),
                    compute_capability="{}.{}".format(values[_CU_ATTR_CC_MAJOR], values[_CU_ATTR_CC_MINOR]),
                    memory_mib=int(memory.value >> 20),
                    integrated=bool(values[_CU_ATTR_INTEGRATED]),
                )
            )
    except Exception as exc:  # a broken driver install must not crash the report
        info.error = "CUDA driver query failed: {}: {}".format(type(exc).__name__, exc)
    return info


def _read_text(path: str) -> Optional[str]:
    try:
        with open(path, "rb") as handle:
            return handle.read().decode("utf-8", "replace").replace("\x00", "").strip()
    except OSError:
        return None


def jetson_model(root: str = "/") -> Optional[str]:
    """The board name from the device tree (``/proc/device-tree/model``), if it is a Jetson."""
    text = _read_text(os.path.join(root, "proc", "device-tree", "model"))
    if text and ("jetson" in text.lower() or "nvidia" in text.lower()):
        return text
    return None


def l4t_release(root: str = "/", run: RunFn = run_command) -> Optional[str]:
    """L4T release ("35.3.1") from /etc/nv_tegra_release, else the nvidia-l4t-core package."""
    text = _read_text(os.path.join(root, "etc", "nv_tegra_release"))
    if text:
        match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
        if match:
            return "{}.{}".format(match.group(1), match.group(2))
    version = run(["dpkg-query", "-W", "-f=${Version}", "nvidia-l4t-core"])
    if version:
        match = re.match(r"\s*(\d+\.\d+(?:\.\d+)?)", version)
        if match:
            return match.group(1)
    return None


def jetpack_version(root: str = "/", run: RunFn = run_command) -> str:
    """JetPack (from the nvidia-jetpack package, else mapped from the L4T release)."""
    l4t = l4t_release(root, run)
    package = run(["dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack"]) or ""
    match = re.match(r"\s*(\d+(?:\.\d+)*\S*?)(?:-|\s|$)", package)
    if match:
        jetpack = match.group(1) + " (nvidia-jetpack package)"
    elif l4t and l4t in L4T_TO_JETPACK:
        jetpack = L4T_TO_JETPACK[l4t]
    elif l4t and l4t.split(".")[0] in L4T_MAJOR_TO_JETPACK:
        jetpack = "{}.x".format(L4T_MAJOR_TO_JETPACK[l4t.split(".")[0]])
    elif l4t:
        jetpack = "unknown for this L4T"
    else:
        return NOT_FOUND
    return "{}{}".format(jetpack, ", L4T R{}".format(l4t) if l4t else "")


def power_mode(run: RunFn = run_command) -> str:
    """``nvpmodel -q``: "MAXN (mode 0)"."""
    text = run(["nvpmodel", "-q"])
    if not text:
        return NOT_FOUND
    match = re.search(r"NV Power Mode:\s*(.+)", text)
    if not match:
        return NOT_FOUND
    name = match.group(1).strip()
    rest = text[match.end():].split()
    mode = next((tok for tok in rest if tok.isdigit()), None)
    return "{} (mode {})".format(name, mode) if mode is not None else name


def dla_cores() -> str:
    """DLA cores TensorRT sees (needs TensorRT and a GPU)."""
    from changenet_trt.errors import ChangeNetError
    from changenet_trt.gpu.trt import import_tensorrt

    try:
        trt = import_tensorrt("counting DLA cores")
    except ChangeNetError:
        return NOT_FOUND + " (needs TensorRT)"
    try:
        from changenet_trt.gpu.trt import create_builder

        builder = create_builder(trt, "counting DLA cores")  # checks the CUDA driver first
        return str(int(builder.num_DLA_cores))
    except Exception as exc:
        return "{} ({}: {})".format(NOT_FOUND, type(exc).__name__, exc)


def environment(root: str = "/", run: RunFn = run_command, cuda: Optional[CudaInfo] = None) -> List[Tuple[str, str]]:
    """``[(label, value)]`` of the environment report. ``root``/``run`` exist for tests."""
    cuda = probe_cuda() if cuda is None else cuda
    rows = [
        ("Python", "{} ({})".format(platform.python_version(), sys.executable)),
        ("platform", "{} {}, {} CPU cores".format(platform.system(), platform.machine(), os.cpu_count() or "?")),
        ("changenet-trt", module_version("changenet_trt")),
        ("numpy", module_version("numpy")),
        ("OpenCV", module_version("cv2")),
        ("onnx", module_version("onnx")),
    ]
    ort_version = module_version("onnxruntime")
    if ort_version not in (NOT_FOUND,) and not ort_version.startswith("broken"):
        try:
            import onnxruntime

            ort_version += " (providers: {})".format(", ".join(onnxruntime.get_available_providers()))
        except Exception:
            pass
    rows.append(("onnxruntime", ort_version))
    rows.append(("TensorRT", module_version("tensorrt")))
    rows.append(("TensorRT precision", installed_precision_path()))
    rows.append(("pycuda", module_version("pycuda", "VERSION_TEXT")))
    rows.append(("CUDA driver", cuda.driver or NOT_FOUND))
    if cuda.gpus:
        for gpu in cuda.gpus:
            rows.append((
                "GPU {}".format(gpu.index),
                "{}, compute capability {}, {} MiB{}".format(
                    gpu.name, gpu.compute_capability, gpu.memory_mib, ", integrated" if gpu.integrated else ""
                ),
            ))
        rows.append(("DLA cores", dla_cores()))
    else:
        rows.append(("GPU", "{}{}".format(NOT_FOUND, " ({})".format(cuda.error) if cuda.error else "")))
        rows.append(("DLA cores", NOT_FOUND))
    model = jetson_model(root)
    rows.append(("Jetson model", model or NOT_FOUND))
    rows.append(("JetPack", jetpack_version(root, run)))
    rows.append(("power mode", power_mode(run) if model else NOT_FOUND + " (not a Jetson)"))
    return rows


# -- which precision path TensorRT takes ---------------------------------------------------------
PATH_STRONGLY_TYPED = ("strongly typed: precision from the ONNX graph only (float16 tensors, Q/DQ from prepare "
                       "--precision); no precision flags, no calibrators")
PATH_TYPED_MODEL = ("strongly typed build of the typed model (prepare --precision); the FP16/INT8 flags and the INT8 "
                    "calibrator still exist")
#: TensorRT 10 deprecations (its release notes): the INT8 calibrators from 10.1, the FP16/INT8
#: builder flags (weak typing) from 10.12; 11.0 removed both
CALIBRATOR_DEPRECATED_SINCE = Version("10.1")
FLAGS_DEPRECATED_SINCE = Version("10.12")
PATH_DERIVED_FLAGS = ("builder flags derived from the typed graph: FP16 when it holds float16 tensors, INT8 when "
                      "it holds Q/DQ, its float32 nodes kept float32 with precision constraints (no strong typing)")


def precision_path(trt: Any) -> str:
    """Which precision path the TensorRT module ``trt`` builds with, read from what it binds
    (feature detection) and named with its version:

    * 11.x (no FP16 builder flag, STRONGLY_TYPED networks): :data:`PATH_STRONGLY_TYPED`;
    * 10.x (STRONGLY_TYPED beside the legacy flags and calibrators): :data:`PATH_TYPED_MODEL`;
    * 8.5/8.6 (no STRONGLY_TYPED): :data:`PATH_DERIVED_FLAGS`.
    """
    creation = getattr(trt, "NetworkDefinitionCreationFlag", None)
    strongly_typed = creation is not None and hasattr(creation, "STRONGLY_TYPED")
    flags = hasattr(getattr(trt, "BuilderFlag", None), "FP16")
    version = str(getattr(trt, "__version__", "unknown version"))
    if strongly_typed and not flags:
        path = PATH_STRONGLY_TYPED
    elif strongly_typed:
        path = PATH_TYPED_MODEL + _deprecations(version)
    elif flags:
        path = PATH_DERIVED_FLAGS
    else:
        return "TensorRT {} binds neither strongly typed networks nor precision flags".format(version)
    return "TensorRT {}: {}".format(version, path)


def _deprecations(version: str) -> str:
    """Which of 10.x's legacy precision controls ``version`` deprecates, as a clause."""
    try:
        release = Version(version)
    except InvalidVersion:
        return ""
    if release >= FLAGS_DEPRECATED_SINCE:
        return " (both deprecated: the calibrator since 10.1, the flags since 10.12)"
    if release >= CALIBRATOR_DEPRECATED_SINCE:
        return " (the calibrator deprecated since 10.1; the flags not yet, until 10.12)"
    return ""


def installed_precision_path() -> str:
    """:func:`precision_path` of the installed TensorRT, or why there is none; never raises."""
    from changenet_trt.errors import ChangeNetError
    from changenet_trt.gpu.trt import import_tensorrt

    try:
        trt = import_tensorrt("the doctor's precision report")
    except ChangeNetError:
        return NOT_FOUND + " (prepare --precision still makes float16/INT8 models on the CPU)"
    except Exception as exc:  # a module that is there but fails to import (bad install)
        return "broken ({}: {})".format(type(exc).__name__, exc)
    return precision_path(trt)


# -- CPU checks -----------------------------------------------------------------------------
def numpy_reference_forward(proto: Any, golden: np.ndarray, sample: np.ndarray) -> np.ndarray:
    """The reference model's graph (see :mod:`changenet_trt.models.reference`) in float64 numpy,
    with the weights read from ``proto``. ``golden``/``sample``: ``[n,3,512,128]``; returns the
    raw output (``[n]``/``[n,1]`` distance or ``[n,2]`` logits) as the ONNX model would."""
    from onnx import numpy_helper

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
    from changenet_trt.tools.demo import make_pairs

    return make_pairs(count, seed=7)


def check_onnxruntime_vs_numpy(workdir: str, pairs: int = 8) -> Check:
    """The reference models through the library's ONNX Runtime path vs :func:`numpy_reference_forward`."""
    import onnx

    from changenet_trt import load
    from changenet_trt.data.preprocess import prepare_batch
    from changenet_trt.models.reference import build_reference_model

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
    import cv2

    from changenet_trt.data.preprocess import PRESETS, prepare_image

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
    import cv2

    from changenet_trt import load
    from changenet_trt.models.reference import write_reference_model

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
    cuda = probe_cuda() if cuda is None else cuda
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
    from changenet_trt.files import write_json_report

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
    state = {name: module_version(name) for name in ("tensorrt", "pycuda")}
    usable = {name: value != NOT_FOUND and not value.startswith("broken") for name, value in state.items()}
    checks: List[Check] = []
    if not all(usable.values()):
        from changenet_trt.errors import TENSORRT_INSTALL_HINT

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
    from changenet_trt.gpu.cuda import primary_context

    ctx = primary_context(0)
    cc = ".".join(str(v) for v in ctx.compute_capability)
    return Check("CUDA context", PASS, "{} (compute capability {}{}, {} MiB)".format(
        ctx.name, cc, ", integrated" if ctx.integrated else "", ctx.total_memory >> 20))


def check_cuda_copies(batch: int = 16, rows: int = 7) -> Check:
    """A batch of float32 pairs ``[batch, 3, 512, 128]`` pinned -> device -> pinned, whole and its
    first ``rows`` rows, on one stream; the bytes must come back unchanged. Reports the
    host-to-device rate measured with CUDA events (GB/s)."""
    from changenet_trt.gpu.cuda import primary_context

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
    from changenet_trt.engine.build import BatchProfile, BuildOptions, build_engine_file

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
    from changenet_trt.evaluation.validate import synthetic_source, validate

    return validate(engine, onnx_path, lambda contract, norm: synthetic_source(
        DEVICE_PAIRS, contract.input_shape, norm, seed=1), backend="tensorrt")


def _run_tensorrt_checks(workdir: str, bench_seconds: float) -> List[Check]:
    """Build the reference engine (FP16, batch 1..16), run it against ONNX Runtime, check that
    ``--fp32-layers`` from fp16-check keeps a planted overflow out of FP16, benchmark at 16."""
    from changenet_trt.models.reference import write_reference_model

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
        from changenet_trt.contract import read_contract
        from changenet_trt.engine.build import read_layer_patterns
        from changenet_trt.engine.fp16_check import check_model, source_batches, write_layer_list
        from changenet_trt.evaluation.validate import synthetic_source

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
        from changenet_trt.tools.bench import BenchOptions, run_benchmark

        result = run_benchmark(engine, BenchOptions(batch=DEVICE_PROFILE[2], duration_s=bench_seconds,
                                                    warmup_ms=200.0, iterations=10), backend="tensorrt")
        if not (result.fps > 0 and np.isfinite(result.fps)):
            return Check("benchmark", FAIL, "no throughput measured ({} queries)".format(len(result.timed)))
        latency = result.stats("latency")
        return Check("benchmark", PASS, "batch {}: {:.1f} pairs/s, latency median {:.3g} ms ({} queries, {:g} s)".format(
            result.batch, result.fps, latency.median, len(result.timed), bench_seconds))

    checks.append(_guarded(bench_check, "benchmark"))
    return checks
