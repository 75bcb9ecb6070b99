"""What this machine has, for ``changenet-trt doctor``'s environment report.

Every probe is defensive: a missing library, file or command reads "not found", never an
exception. The GPUs come from the CUDA driver library (:func:`changenet_trt.gpu.cuda.probe_driver`),
TensorRT and pycuda through :mod:`changenet_trt.gpu`, the precision path the installed TensorRT
builds with from :class:`changenet_trt.gpu.trt.PrecisionPath`; the Jetson rows from the device
tree, ``/etc/nv_tegra_release``, dpkg and ``nvpmodel``.
"""

import os
import platform
import re
import shutil
import subprocess
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import onnxruntime
from packaging.version import InvalidVersion, Version

from changenet_trt.errors import ChangeNetError, DependencyError, optional_import
from changenet_trt.gpu.cuda import CudaInfo, probe_driver, pycuda_version
from changenet_trt.gpu.trt import (
    CALIBRATOR_DEPRECATED_SINCE,
    FLAGS_DEPRECATED_SINCE,
    PrecisionPath,
    create_builder,
    import_tensorrt,
    installed_description,
    installed_version,
)

NOT_FOUND = "not found"

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


RunFn = Callable[[Sequence[str]], Optional[str]]


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
        module = optional_import(name, "the environment report")
    except DependencyError:
        return NOT_FOUND
    except Exception as exc:  # a module that is there but fails to import (bad install)
        return "broken ({}: {})".format(type(exc).__name__, exc)
    return str(getattr(module, attribute, "installed (version unknown)"))


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
    try:
        trt = import_tensorrt("counting DLA cores")
    except ChangeNetError:
        return NOT_FOUND + " (needs TensorRT)"
    try:
        builder = create_builder(trt, "counting DLA cores")  # checks the CUDA driver first
        return str(int(builder.num_DLA_cores))
    except Exception as exc:
        return "{} ({}: {})".format(NOT_FOUND, type(exc).__name__, exc)


def environment(root: str = "/", run: RunFn = run_command, cuda: Optional[CudaInfo] = None) -> List[Tuple[str, str]]:
    """``[(label, value)]`` of the environment report. ``root``/``run`` exist for tests."""
    cuda = probe_driver() if cuda is None else cuda
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
            ort_version += " (providers: {})".format(", ".join(onnxruntime.get_available_providers()))
        except Exception:
            pass
    rows.append(("onnxruntime", ort_version))
    rows.append(("TensorRT", installed_description()))
    rows.append(("TensorRT precision", installed_precision_path()))
    rows.append(("pycuda", pycuda_version()))
    rows.append(("CUDA driver", cuda.driver or NOT_FOUND))
    if cuda.gpus:
        for gpu in cuda.gpus:
            rows.append((
                "GPU {}".format(gpu.index),
                "{}, compute capability {}, {} MiB{}".format(
                    gpu.name, gpu.capability, gpu.memory_mib, ", integrated" if gpu.integrated else ""
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
def precision_path(trt_version: str) -> str:
    """The precision path of TensorRT ``trt_version`` (:meth:`PrecisionPath.of`), in words, with
    what a 10.x release deprecates."""
    path = PrecisionPath.of(trt_version)
    clause = _deprecations(trt_version) if path is PrecisionPath.TYPED_MODEL else ""
    return "TensorRT {}: {}{}".format(trt_version, path.value, clause)


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
    try:
        trt = import_tensorrt("the doctor's precision report")
    except ChangeNetError:
        return NOT_FOUND + " (prepare --precision still makes float16/INT8 models on the CPU)"
    except Exception as exc:  # a module that is there but fails to import (bad install)
        return "broken ({}: {})".format(type(exc).__name__, exc)
    try:
        return precision_path(str(trt.__version__))
    except (AttributeError, InvalidVersion) as exc:
        return "TensorRT of unknown version ({}: {})".format(type(exc).__name__, exc)


# -- for the record of a measurement --------------------------------------------------------
def machine_info(backend: str) -> Dict[str, Any]:
    """CPU model, cores, OS and runtime versions, for the record."""
    info: Dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
    }
    try:
        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    if backend == "tensorrt":
        found = installed_version()
        if found is not None:
            info["tensorrt"] = str(found)
    return info


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
