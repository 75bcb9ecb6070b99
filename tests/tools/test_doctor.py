"""doctor: environment report (defensive probes, Jetson parsing) and the CPU checks."""

import json
import os

import numpy as np
import pytest

from changenet_trt.cli import main
from changenet_trt.engine.options import BuildOptions
from changenet_trt.engine.plan import make_plan
from changenet_trt.gpu.cuda import CudaInfo, GpuInfo
from changenet_trt.gpu.trt import PrecisionPath
from changenet_trt.tools import doctor, machine

NO_GPU = CudaInfo(error="no CUDA driver library (libcuda): test machine")


def _no_commands(argv):
    return None


def _write(path, text, binary=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb" if binary else "w") as handle:
        handle.write(text)


@pytest.fixture
def jetson_root(tmp_path):
    """A file system root that looks like a JetPack 5.1.1 AGX Orin."""
    _write(str(tmp_path / "proc/device-tree/model"), b"NVIDIA Jetson AGX Orin Developer Kit\x00", binary=True)
    _write(str(tmp_path / "etc/nv_tegra_release"),
           "# R35 (release), REVISION: 3.1, GCID: 32827747, BOARD: t186ref, EABI: aarch64, DATE: Sun Mar 19 2023\n")
    return str(tmp_path)


def _jetson_commands(argv):
    if argv[0] == "nvpmodel":
        return "NVPM WARN: fan mode is not set!\nNV Power Mode: MAXN\n0\n"
    return None


def test_environment_on_a_jetson(jetson_root):
    gpu = GpuInfo("Orin", (8, 7), 0, 30000, True)
    env = dict(machine.environment(jetson_root, _jetson_commands, CudaInfo(driver="11.4", gpus=[gpu])))
    assert env["Jetson model"] == "NVIDIA Jetson AGX Orin Developer Kit"
    assert env["JetPack"] == "5.1.1, L4T R35.3.1"
    assert env["power mode"] == "MAXN (mode 0)"
    assert env["CUDA driver"] == "11.4"
    assert env["GPU 0"] == "Orin, compute capability 8.7, 30000 MiB, integrated"
    assert "DLA cores" in env


def test_jetpack_from_packages_when_the_release_file_is_missing(tmp_path):
    def dpkg(argv):
        if argv[:2] == ["dpkg-query", "-W"] and argv[-1] == "nvidia-l4t-core":
            return "36.3.0-20240506102626"
        return None

    assert machine.jetpack_version(str(tmp_path), dpkg) == "6.0, L4T R36.3.0"

    def with_meta(argv):
        return "6.1+b123" if argv[-1] == "nvidia-jetpack" else dpkg(argv)

    assert machine.jetpack_version(str(tmp_path), with_meta) == "6.1+b123 (nvidia-jetpack package), L4T R36.3.0"


@pytest.mark.parametrize("release, jetpack", [
    ("R38 (release), REVISION: 2.1", "7.0, L4T R38.2.1"), ("R38 (release), REVISION: 4.0", "7.1, L4T R38.4.0"),
    ("R39 (release), REVISION: 2.0", "7.2, L4T R39.2.0"), ("R39 (release), REVISION: 2.2", "7.x, L4T R39.2.2"),
    ("R36 (release), REVISION: 5.0", "6.x, L4T R36.5.0"),
])
def test_l4t_38_and_39_are_jetpack_7(tmp_path, release, jetpack):
    _write(str(tmp_path / "etc/nv_tegra_release"), "# {}, GCID: 1\n".format(release))
    assert machine.jetpack_version(str(tmp_path), _no_commands) == jetpack


@pytest.mark.parametrize("version, says", [
    ("10.0.1", None), ("10.3.0", "the calibrator deprecated since 10.1; the flags not yet"),
    ("10.16.1", "both deprecated: the calibrator since 10.1, the flags since 10.12"),
])
def test_the_10x_path_names_what_that_release_deprecates(version, says):
    path = machine.precision_path(version)
    assert path.startswith("TensorRT {}: {}".format(version, PrecisionPath.TYPED_MODEL.value))
    assert (says in path) if says else "deprecated" not in path


def test_unknown_l4t_release_is_reported_as_such(tmp_path):
    _write(str(tmp_path / "etc/nv_tegra_release"), "# R99 (release), REVISION: 1.0, GCID: 1\n")
    assert machine.jetpack_version(str(tmp_path), _no_commands) == "unknown for this L4T, L4T R99.1.0"


def test_environment_without_anything_reads_not_found(tmp_path):
    env = dict(machine.environment(str(tmp_path), _no_commands, NO_GPU))
    for key in ("CUDA driver", "DLA cores", "Jetson model", "JetPack"):
        assert env[key] == "not found", key
    assert env["GPU"].startswith("not found (no CUDA driver library")
    assert env["power mode"].startswith("not found")
    assert env["numpy"] == np.__version__
    for key in ("Python", "OpenCV", "onnxruntime", "TensorRT", "pycuda"):
        assert key in env


def test_garbage_files_and_failing_commands_do_not_crash(tmp_path):
    _write(str(tmp_path / "proc/device-tree/model"), b"\xff\xfe garbage \x00", binary=True)
    _write(str(tmp_path / "etc/nv_tegra_release"), "nonsense\n")

    def odd(argv):
        return "NV Power Mode:\n" if argv[0] == "nvpmodel" else "not-a-version"

    env = dict(machine.environment(str(tmp_path), odd, NO_GPU))
    assert env["Jetson model"] == "not found" and env["JetPack"] == "not found"


def test_run_command_and_module_version_are_defensive(tmp_path, monkeypatch):
    assert machine.run_command(["surely-not-a-command-changenet"]) is None
    assert machine.run_command(["false"]) is None
    assert machine.module_version("surely_not_a_module_changenet") == "not found"
    _write(str(tmp_path / "broken_changenet_mod.py"), "raise RuntimeError('bad install')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert machine.module_version("broken_changenet_mod").startswith("broken (RuntimeError: bad install")


def test_power_mode_parsing():
    assert machine.power_mode(lambda argv: "NV Power Mode: 15W\n2\n") == "15W (mode 2)"
    assert machine.power_mode(_no_commands) == "not found"


# -- which precision path the installed TensorRT takes ------------------------------------------------
@pytest.mark.parametrize("fake_trt, version, path, says", [
    ("8.5", "8.5.2.2", PrecisionPath.DERIVED_FLAGS.value, "builder flags derived from the typed graph"),
    ("8.6", "8.6.2.3", PrecisionPath.DERIVED_FLAGS.value, "FP16 when it holds float16 tensors, INT8 when it holds Q/DQ"),
    ("10.x", "10.3.0", PrecisionPath.TYPED_MODEL.value, "calibrator still exist"),
    ("11.x", "11.4.0", PrecisionPath.STRONGLY_TYPED.value, "no precision flags, no calibrators"),
], indirect=["fake_trt"])
def test_environment_names_the_precision_path_of_each_tensorrt(fake_trt, version, path, says, tmp_path):
    env = dict(machine.environment(str(tmp_path), _no_commands, NO_GPU))
    assert env["TensorRT"] == version
    assert env["TensorRT precision"].startswith("TensorRT {}: {}".format(version, path))
    assert says in path
    assert ("strongly typed" in path) == (version[:2] in ("10", "11"))


@pytest.mark.parametrize("version, path", [
    ("8.5.2.2", PrecisionPath.DERIVED_FLAGS), ("8.6.2.3", PrecisionPath.DERIVED_FLAGS),
    ("10.0.1", PrecisionPath.TYPED_MODEL), ("10.16.1", PrecisionPath.TYPED_MODEL),
    ("11.0.0", PrecisionPath.STRONGLY_TYPED), ("11.4.1", PrecisionPath.STRONGLY_TYPED),
])
def test_doctor_and_the_build_plan_read_one_precision_path(version, path, reference_models):
    # one enum decides: doctor's words, and whether the plan builds strongly typed
    assert PrecisionPath.of(version) is path
    assert machine.precision_path(version).startswith("TensorRT {}: {}".format(version, path.value))
    plan = make_plan(BuildOptions(model=reference_models["learnable_dynamic"], precision="fp32"), trt_version=version,
                     gpu=GpuInfo())
    assert plan.strongly_typed == path.strongly_typed


def test_precision_path_without_tensorrt(no_tensorrt, tmp_path):
    env = dict(machine.environment(str(tmp_path), _no_commands, NO_GPU))
    assert env["TensorRT"] == "not found"
    assert env["TensorRT precision"].startswith("not found (prepare --precision")


@pytest.mark.parametrize("fake_trt", ["11.x"], indirect=True)
def test_cli_doctor_reports_the_precision_path(fake_trt, capsys, monkeypatch):
    monkeypatch.setattr(doctor, "probe_driver", lambda: NO_GPU)
    for name in ("check_onnxruntime_vs_numpy", "check_preprocessing", "check_decisions"):  # CPU checks run elsewhere
        monkeypatch.setattr(doctor, name, lambda workdir, name=name: doctor.Check(name, "PASS", "stand-in"))
    assert main(["doctor", "--cpu-only"]) == 0
    assert "\n  TensorRT precision  TensorRT 11.4.0: strongly typed" in capsys.readouterr().out


# -- checks -------------------------------------------------------------------------------------
def test_cpu_path_passes_and_skips_device_checks(tmp_path):
    report = doctor.run_doctor(workdir=str(tmp_path), root=str(tmp_path), run=_no_commands, cuda=NO_GPU)
    status = {c.name: c.status for c in report.checks}
    assert status["onnxruntime vs numpy"] == "PASS"
    assert status["preprocessing"] == "PASS"
    assert status["pipeline decisions"] == "PASS"
    skipped = [c for c in report.checks if c.status == "SKIP"]
    assert [c.name for c in skipped] == list(doctor.DEVICE_CHECKS)
    assert all("no GPU" in c.detail for c in skipped)
    assert report.ok
    lines = doctor.format_report(report)
    assert lines[-1] == "3 passed, 0 failed, {} skipped: every check that applies passed".format(len(skipped))


def test_numpy_forward_matches_for_every_reference_variant(tmp_path):
    import onnxruntime as ort

    from changenet_trt.models.reference import build_reference_model

    rng = np.random.default_rng(0)
    golden = rng.standard_normal((3, 3, 512, 128)).astype(np.float32)
    sample = rng.standard_normal((3, 3, 512, 128)).astype(np.float32)
    for kwargs in (dict(kind="learnable"), dict(kind="euclidean"), dict(kind="euclidean", euclidean_rank=2)):
        proto = build_reference_model(**kwargs)
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        want = session.run(None, {"input_1": sample, "input_2": golden})[0]
        got = doctor.numpy_reference_forward(proto, golden, sample)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_a_wrong_computation_fails_the_check(tmp_path, monkeypatch):
    real = doctor.numpy_reference_forward
    monkeypatch.setattr(doctor, "numpy_reference_forward", lambda *a: real(*a) + 1e-3)
    check = doctor.check_onnxruntime_vs_numpy(str(tmp_path))
    assert check.status == "FAIL" and "differs from numpy" in check.detail


def test_swapped_channels_fail_the_preprocessing_check(tmp_path, monkeypatch):
    import changenet_trt.data.preprocess as preprocess

    real = preprocess.write_normalized

    def swapped(dst, image, normalization=None, bgr=True, source="image"):
        real(dst, image, normalization, not bgr, source)

    monkeypatch.setattr(preprocess, "write_normalized", swapped)
    check = doctor.check_preprocessing(str(tmp_path))
    assert check.status == "FAIL"


def test_an_exception_in_a_check_is_that_check_failing():
    def boom(workdir):
        raise ValueError("disk full")

    check = doctor._guarded(boom, "x", "/nowhere")
    assert check.status == "FAIL" and "ValueError: disk full" in check.detail


def test_gpu_without_tensorrt_fails_and_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(doctor, "installed_description", lambda: "not found")
    monkeypatch.setattr(doctor, "pycuda_version", lambda: "not found")
    gpu = GpuInfo("Tesla T4", (7, 5), 0, 15000, False)
    checks = doctor.device_checks(str(tmp_path), CudaInfo(driver="12.2", gpus=[gpu]))
    assert checks[0].status == "FAIL"
    assert "tensorrt not installed" in checks[0].detail and "pip install" in checks[0].detail
    assert [c.status for c in checks[1:]] == ["SKIP"] * len(doctor.DEVICE_CHECKS)


def test_gpu_with_pycuda_and_without_tensorrt_runs_the_cuda_checks(no_tensorrt, fake_cuda, tmp_path):
    checks = doctor.device_checks(str(tmp_path), FAKE_GPU)
    status = {c.name: c for c in checks}
    assert status["TensorRT and pycuda"].status == "FAIL" and "tensorrt not installed" in status["TensorRT and pycuda"].detail
    assert "pycuda" not in status["TensorRT and pycuda"].detail.split("(")[0]
    assert status["CUDA context"].status == "PASS" and "Fake GPU (Orin)" in status["CUDA context"].detail
    assert status["CUDA copies"].status == "PASS" and "unchanged (whole and first 7 rows)" in status["CUDA copies"].detail
    assert [status[name].status for name in doctor.TENSORRT_CHECKS] == ["SKIP"] * 4
    assert {status[name].detail for name in doctor.TENSORRT_CHECKS} == {"needs TensorRT"}
    assert fake_cuda.device.summary() == {"device_allocations": 0, "pinned_buffers": 0, "streams": 0}


def test_cuda_copies_fail_when_bytes_change(fake_cuda, monkeypatch):
    from changenet_trt.gpu import cuda

    real = cuda.DeviceBuffer.download

    def corrupt(self, host, stream):
        real(self, host, stream)
        stream.synchronize()
        host.reshape(-1)[0] += 1

    monkeypatch.setattr(cuda.DeviceBuffer, "download", corrupt)
    check = doctor.check_cuda_copies()
    assert check.status == "FAIL" and "whole batch differs" in check.detail


def test_cpu_only_skips_device_checks(tmp_path):
    gpu = GpuInfo("Tesla T4", (7, 5), 0, 15000, False)
    checks = doctor.device_checks(str(tmp_path), CudaInfo(gpus=[gpu]), enabled=False)
    assert [c.status for c in checks] == ["SKIP"] * len(doctor.DEVICE_CHECKS)


# -- CLI -------------------------------------------------------------------------------------------
def test_cli_doctor_cpu_only(tmp_path, capsys):
    out = tmp_path / "doctor.json"
    code = main(["doctor", "--cpu-only", "--json", str(out)])
    text = capsys.readouterr().out
    assert code == 0
    for label in ("Python", "numpy", "OpenCV", "onnxruntime", "TensorRT", "pycuda", "CUDA driver", "DLA cores",
                  "Jetson model", "JetPack", "power mode"):
        assert "\n  {} ".format(label) in text, label
    assert "PASS  onnxruntime vs numpy" in text
    assert "every check that applies passed" in text
    data = json.loads(out.read_text())
    assert data["ok"] is True and {c["status"] for c in data["checks"]} <= {"PASS", "SKIP"}


def test_cli_doctor_exit_code_is_1_when_a_check_fails(monkeypatch, capsys):
    monkeypatch.setattr(doctor, "check_preprocessing", lambda workdir: doctor.Check("preprocessing", "FAIL", "x"))
    assert main(["doctor", "--cpu-only"]) == 1
    assert "FAILED" in capsys.readouterr().out


# -- device path through the TensorRT and pycuda test doubles ------------------------------------
FAKE_GPU = CudaInfo(driver="12.2", gpus=[GpuInfo("Fake GPU (Orin)", (8, 7), 0, 8192, True)])


@pytest.mark.parametrize("fake_trt", ["8.5", "10.x"], indirect=True)
def test_device_checks_through_the_fakes(fake_trt, fake_cuda, tmp_path):
    checks = doctor.device_checks(str(tmp_path), FAKE_GPU, bench_seconds=0.2)
    status = {c.name: c for c in checks}
    assert list(status) == list(doctor.DEVICE_CHECKS)
    for name in doctor.DEVICE_CHECKS:
        assert status[name].status == "PASS", (name, status[name].detail)
    assert "Fake GPU (Orin)" in status["CUDA context"].detail
    assert "overflow/square" in status["float32 layers"].detail
    assert "pairs/s" in status["benchmark"].detail
    # the engines really were built by the (fake) TensorRT builder, the second one with constraints
    builds = fake_trt._fake.builds
    assert len(builds) == 2
    if builds[1]["strongly_typed"]:  # TensorRT 10+: the typed model holds them float32, no layer precision
        assert builds[1]["precision_constraints"] == {} and builds[1]["typed_precision"]["float16"]
    else:
        assert {"overflow/scale_down", "overflow/square"} <= set(builds[1]["precision_constraints"])


def test_failed_engine_build_fails_that_check_and_skips_the_rest(fake_trt, fake_cuda, tmp_path, monkeypatch):
    from changenet_trt.errors import BuildError

    def refuse(*args, **kwargs):
        raise BuildError("TensorRT refused the network")

    monkeypatch.setattr(doctor, "_build", refuse)
    checks = doctor.device_checks(str(tmp_path), FAKE_GPU, bench_seconds=0.2)
    assert [c.status for c in checks] == ["PASS", "PASS", "FAIL", "SKIP", "SKIP", "SKIP"]
    assert "TensorRT refused the network" in checks[2].detail


def test_engine_that_disagrees_with_onnxruntime_fails(fake_trt, fake_cuda, tmp_path, monkeypatch):
    real = doctor._compare

    def drifted(workdir, engine, onnx_path):
        report = real(workdir, engine, onnx_path)
        report.flips.indices.append(0)  # one decision flipped, as a broken engine would
        return report

    monkeypatch.setattr(doctor, "_compare", drifted)
    checks = {c.name: c for c in doctor.device_checks(str(tmp_path), FAKE_GPU, bench_seconds=0.2)}
    assert checks["engine vs onnxruntime"].status == "FAIL"
    assert "decision flips" in checks["engine vs onnxruntime"].detail
