"""The build executes its plan: one BuildPlan says the flags, pools and profile; ``--dry-run``,
``--print-trtexec``, the builder config the build fills and the sidecar all read it."""

import dataclasses
import os
import shlex
import types

import pytest

from changenet_trt.cli import main
from changenet_trt.engine.build import _warn_slow_precisions, build_engine_file, fast_precisions
from changenet_trt.engine.options import BatchProfile, BuildOptions
from changenet_trt.engine.plan import TRTEXEC_FLAGS, builder_flags, make_plan
from changenet_trt.errors import BuildError, InputError
from changenet_trt.gpu.cuda import GpuInfo
from changenet_trt.sidecar import read_sidecar

from helpers import TESTS_DIR

NEWER_THAN_85 = {"VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME"}


def _names(filename):
    with open(os.path.join(TESTS_DIR, "fakes", "tensorrt_names", filename)) as handle:
        return {line.split()[0] for line in handle if line.strip() and not line.startswith("#")}


def _record_set_flags(trt, monkeypatch):
    """Every ``set_flag`` the build calls on the fake builder config, by member name, in order."""
    calls = []
    original = trt.IBuilderConfig.set_flag

    def set_flag(self, flag):
        calls.append(flag.name)
        return original(self, flag)

    monkeypatch.setattr(trt.IBuilderConfig, "set_flag", set_flag)
    return calls


def _option_sets(model, mode):
    sets = [
        dict(),
        dict(precision="fp32", workspace_mib=64),
        dict(precision="int8", profile=BatchProfile(1, 4, 8), fp32_layers=["node_of_head.m*"]),
    ]
    if mode != "11.x":  # the fake plays 11.4.0, which has no DLA (11.4.1 brings it back)
        sets.append(dict(dla_core=0, profile=BatchProfile(16, 16, 16), fp32_layers=["node_of_head.rms"],
                         precision_constraints="prefer"))
    if mode != "11.x":  # the legacy calibrator: TensorRT 8.5-10.x
        sets.append(dict(precision="int8", profile=BatchProfile(1, 4, 8), fp32_layers=["node_of_head.m*"],
                         int8_calibrator=True))
    if mode != "8.5":
        sets.append(dict(version_compatible=True, opt_level=2))
        sets.append(dict(precision="fp32", version_compatible=True, exclude_lean_runtime=True))
    return [BuildOptions(model=model, progress=False, proof_pairs=8, output="engines/{}.engine".format(i), **kw)
            for i, kw in enumerate(sets)]


@pytest.mark.parametrize("mode", ["8.5", "10.x", "11.x"])
def test_flags_set_on_the_builder_config_are_the_plan_flags_and_the_sidecar_flags(
        mode, fake_trt_factory, fake_cuda, reference_models, workdir, monkeypatch):
    from changenet_trt.contract import read_contract
    from changenet_trt.engine.calibration import array_batches
    from changenet_trt.engine.prepare import proof_pairs

    trt = fake_trt_factory(mode)
    set_flags = _record_set_flags(trt, monkeypatch)
    model = reference_models["learnable_dynamic"]
    golden, sample = proof_pairs(read_contract(model), 8)
    seen = set()
    for options in _option_sets(model, mode):
        del set_flags[:]
        plan = make_plan(options)
        batches = array_batches(golden, sample, 4) if options.precision == "int8" else None
        result = build_engine_file(plan=plan, calibration_batches=batches)
        meta = read_sidecar(result.engine_path)
        # the plan is a frozen value: the build returns a new, complete plan made from it and the typed model
        assert result.plan is result.typed.plan and result.plan.typed_ready
        assert (result.plan.options, result.plan.engine_path) == (plan.options, plan.engine_path)
        plan = result.plan
        assert set_flags == plan.flags == result.configured.flags == meta.flags["builder_flags"], options
        assert meta.flags["strongly_typed"] == plan.strongly_typed == (mode != "8.5" and not options.int8_calibrator)
        assert meta.flags["typed_onnx_sha256"] == result.typed.sha256
        if plan.makes_typed_model:
            assert meta.flags["typed_onnx_made"]["precision"] == plan.precision
            assert meta.flags["typed_onnx_made"]["build_inputs"]["source_sha256"] == meta.onnx_sha256
        # TensorRT's own defaults (TF32) aside, the config holds exactly the plan's flags
        record = trt._fake.builds[-1]
        assert sorted(set(record["flags"]) - {"TF32"}) == sorted(plan.flags)
        assert record["pool_limits"] == plan.memory_pools
        assert meta.flags["memory_pools_mib"] == {k.lower(): v >> 20 for k, v in plan.memory_pools.items()}
        assert meta.flags["version_compatible"] == options.version_compatible
        assert meta.flags["exclude_lean_runtime"] == options.exclude_lean_runtime
        assert record["builder_optimization_level"] == (None if mode == "8.5" else plan.opt_level or 3)
        if plan.strongly_typed:
            assert record["strongly_typed"] and record["calibrator_calls"] == []
        seen.update(plan.flags)
    expected = {"FP16", "INT8", "GPU_FALLBACK", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS"}
    if mode == "8.5":
        assert seen == expected
    elif mode == "10.x":  # precision flags only on the legacy calibrator path
        assert seen == expected - {"PREFER_PRECISION_CONSTRAINTS"} | NEWER_THAN_85
    else:
        assert seen == NEWER_THAN_85  # 11.4.0 has no DLA, so no GPU_FALLBACK


def test_every_flag_a_plan_sets_is_a_tensorrt_flag_with_a_trtexec_spelling(reference_models):
    model = reference_models["learnable_dynamic"]
    produced = set()
    for options in _option_sets(model, "10.x"):
        produced.update(builder_flags(options, strongly_typed=False, held={"float16": True, "qdq": True},
                                      fp32_layers=options.fp32_layers))
    assert produced == set(TRTEXEC_FLAGS)
    assert set(TRTEXEC_FLAGS) <= _names("names-10.x.txt")
    assert set(TRTEXEC_FLAGS) - NEWER_THAN_85 <= _names("names-8.5.txt")
    assert not NEWER_THAN_85 & _names("names-8.5.txt")


def test_version_compatible_engine_in_10x(fake_trt, fake_cuda, reference_models, workdir):
    result = build_engine_file(BuildOptions(model=reference_models["learnable_dynamic"], progress=False,
                                            version_compatible=True, exclude_lean_runtime=True))
    record = fake_trt._fake.builds[-1]
    assert {"VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME"} <= set(record["flags"])
    meta = read_sidecar(result.engine_path)
    assert meta.flags["version_compatible"] and meta.flags["exclude_lean_runtime"]
    assert meta.flags["builder_flags"] == ["VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME"]


def test_version_compatible_is_refused_on_85_with_the_reason(fake_trt_factory, fake_cuda, reference_models, workdir):
    fake_trt_factory("8.5")
    with pytest.raises(InputError, match="version-compatible engines need TensorRT 8.6 or newer.*found TensorRT 8.5"):
        build_engine_file(BuildOptions(model=reference_models["learnable_dynamic"], progress=False,
                                       version_compatible=True))
    assert not os.path.exists("engines")
    fake_trt_factory("8.6")
    result = build_engine_file(BuildOptions(model=reference_models["learnable_dynamic"], progress=False,
                                            version_compatible=True))
    assert result.metadata.flags["version_compatible"]


def test_build_dry_run_version_compatible(no_tensorrt, reference_models, workdir, capsys):
    model = reference_models["learnable_dynamic"]
    assert main(["build", model, "--dry-run", "--version-compatible", "--exclude-lean-runtime"]) == 0
    out = capsys.readouterr().out
    assert "builder flags:  VERSION_COMPATIBLE, EXCLUDE_LEAN_RUNTIME" in out
    assert "version-compatible" in out and "lean runtime excluded" in out
    assert not os.path.exists("engines")

    assert main(["build", model, "--dry-run", "--version-compatible", "--trt-version", "8.5.2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "need TensorRT 8.6 or newer" in err and "found TensorRT 8.5.2" in err
    assert main(["build", model, "--dry-run", "--exclude-lean-runtime"]) == 2
    assert "only applies to version-compatible engines" in capsys.readouterr().err


def test_print_trtexec_renders_version_compatibility(no_tensorrt, reference_models, workdir, capsys):
    model = reference_models["learnable_dynamic"]
    assert main(["build", model, "--print-trtexec", "--version-compatible", "--trt-version", "10.3.0"]) == 0
    cmd = capsys.readouterr().out.split()
    assert "--versionCompatible" in cmd and "--excludeLeanRuntime" not in cmd
    assert main(["build", model, "--print-trtexec", "--version-compatible", "--exclude-lean-runtime",
                 "--trt-version", "8.6.2"]) == 0
    cmd = capsys.readouterr().out.split()
    assert "--versionCompatible" in cmd and "--excludeLeanRuntime" in cmd and "--skipInference" in cmd
    assert main(["build", model, "--print-trtexec", "--version-compatible", "--trt-version", "8.5.2"]) == 2


def test_dry_run_trtexec_and_build_read_the_same_plan(fake_trt, fake_cuda, reference_models, workdir, capsys):
    args = ["build", reference_models["learnable_dynamic"], "--dla-core", "0", "--batch", "16", "--fp32-layers",
            "node_of_head.rms",
            "--version-compatible", "--workspace", "256", "--quiet", "-o", "engines/same.engine", "--proof-pairs", "8"]
    assert main(args + ["--dry-run"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("builder flags:"))
    planned = line.split(":", 1)[1].strip().split(", ")
    assert main(args + ["--print-trtexec"]) == 0
    trtexec = shlex.split(capsys.readouterr().out.strip().splitlines()[-1])
    assert not os.path.exists("engines/same.engine")
    assert main(args) == 0
    meta = read_sidecar("engines/same.engine")
    assert planned == meta.flags["builder_flags"] == ["GPU_FALLBACK", "VERSION_COMPATIBLE"]
    assert "--stronglyTyped" in trtexec
    rendered = [arg for flag in planned for arg in TRTEXEC_FLAGS[flag]]
    assert [arg for arg in trtexec if arg in rendered] == rendered
    assert "--memPoolSize=workspace:256M" in trtexec and meta.flags["memory_pools_mib"] == {"workspace": 256}
    assert sorted(set(fake_trt._fake.builds[-1]["flags"]) - {"TF32"}) == sorted(planned)


def test_a_plan_for_another_tensorrt_is_refused(fake_trt, fake_cuda, reference_models, workdir):
    plan = make_plan(BuildOptions(model=reference_models["learnable_dynamic"], progress=False, proof_pairs=8),
                     trt_version="8.5.2")
    with pytest.raises(BuildError, match="made for TensorRT 8.5.2; this is TensorRT 10.3.0"):
        build_engine_file(plan=plan)


def test_fast_precisions_come_from_the_compute_capability(caplog):
    assert fast_precisions(GpuInfo("GTX 1080", (6, 1))) == {"fp16": False, "int8": True}
    assert fast_precisions(GpuInfo("Orin", (8, 7))) == {"fp16": True, "int8": True}
    assert fast_precisions(GpuInfo("Maxwell", (5, 2))) == {"fp16": False, "int8": False}
    assert fast_precisions(GpuInfo()) == {"fp16": None, "int8": None}

    _warn_slow_precisions(types.SimpleNamespace(precision="fp16", gpu=GpuInfo("GTX 1080", (6, 1))))
    assert "no fast FP16" in caplog.text and "no fast INT8" not in caplog.text
    caplog.clear()
    _warn_slow_precisions(types.SimpleNamespace(precision="fp16", gpu=GpuInfo()))
    assert caplog.text == ""  # unknown GPU: nothing to warn about


def test_calibration_batches_show_as_a_bar_on_a_terminal(fake_trt, fake_cuda, reference_models, workdir):
    import io

    from changenet_trt.contract import read_contract
    from changenet_trt.engine.calibration import array_batches
    from changenet_trt.engine.prepare import proof_pairs

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    model = reference_models["learnable_dynamic"]
    golden, sample = proof_pairs(read_contract(model), 8)
    shown = Terminal()
    result = build_engine_file(BuildOptions(model=model, precision="int8", profile=BatchProfile(1, 4, 8)),
                               calibration_batches=array_batches(golden, sample, 4), status_stream=shown)
    assert result.typed.made["calibration_batches"] == 2
    text = shown.getvalue()
    assert "making the INT8 Q/DQ model" in text and "calibrating (onnxruntime)" in text and "building engine" in text


def test_the_plan_is_a_frozen_value_made_in_two_stages(fake_trt_factory, reference_models, workdir):
    fake_trt_factory("8.5")
    options = BuildOptions(model=reference_models["learnable_dynamic"], precision="fp16", progress=False)
    first = make_plan(options, trt_version="8.5.2", gpu=GpuInfo())
    # stage one: the typed model is not made yet, so TensorRT 8.x's FP32 layers are not known
    assert not first.typed_ready and first.fp32_layers is None and first.flags == ["FP16"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.flags = []
    complete = first.with_typed_model({"float16": True, "qdq": False, "fp32_nodes": ["node_a"]})
    # stage two: a new plan with the typed model's facts; the first one is unchanged
    assert complete.typed_ready and complete.fp32_layers == ["node_a"] and complete.held["fp32_nodes"] == ["node_a"]
    assert complete.flags == ["FP16", "OBEY_PRECISION_CONSTRAINTS"]
    assert not first.typed_ready and first.fp32_layers is None and first.held == {}
