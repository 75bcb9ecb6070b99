"""Keep the TensorRT fake and the package honest against the real TensorRT module.

* ``names-10.x.txt``: the names the real TensorRT 10.3 Python module binds, extracted from
  PyPI's ``tensorrt-cu12-bindings`` wheel by ``extract_names.py`` (with a short supplement of
  names the extraction cannot see, each with its source line);
* ``names-8.5.txt``: the TensorRT 8.5 names the fake plays in its 8.5 mode, each with the
  file of NVIDIA's 8.5.3 Python bindings source that binds it;
* ``names-11.x.txt``: the names of the TensorRT 11.4 module (the same extraction from
  ``tensorrt-cu12-bindings`` 11.4.0, plus its supplement), which dropped every builder-side
  precision control.

Every public name of the fake (module attributes, class members, enum members) must be in
the list of the version it plays; every TensorRT name the package uses (statically: chains
on the ``trt`` module and feature-detection strings; dynamically: what a build and an engine
load touch on the fake) must be in the 10.x list, and what an 8.5-mode build touches in the
8.5 list.
"""

import ast
import enum
import os
from typing import Dict, Iterable, Set

import pytest

from changenet_trt.engine.build import build_engine_file
from changenet_trt.engine.options import BatchProfile, BuildOptions
from changenet_trt.gpu.trt import io_tensors, make_logger, profile_shapes

from fakes.tensorrt import make_module
from helpers import REPO_ROOT, TESTS_DIR

NAMES_DIR = os.path.join(TESTS_DIR, "fakes", "tensorrt_names")
PACKAGE_DIR = os.path.join(REPO_ROOT, "changenet_trt")
REMOVED_IN_10 = ("num_bindings", "execute_async_v2", "build_engine", "max_workspace_size", "get_binding_shape",
                 "set_binding_shape", "get_profile_shape", "STRICT_TYPES", "EXPLICIT_PRECISION",
                 "build_cuda_engine")


def _read_names(filename: str) -> Dict[str, str]:
    """name -> note (text after the name on its line); ``#`` lines are comments."""
    names = {}
    with open(os.path.join(NAMES_DIR, filename)) as handle:
        for line in handle:
            line = line.strip()
            if line and not line.startswith("#"):
                name, _, note = line.partition(" ")
                names[name] = note.strip()
    return names


NAMES_10 = set(_read_names("names-10.x.txt")) | set(_read_names("names-10.x-supplement.txt"))
NAMES_85 = _read_names("names-8.5.txt")
NAMES_11 = set(_read_names("names-11.x.txt")) | set(_read_names("names-11.x-supplement.txt"))
#: what TensorRT 11 removed (builder-side precision, calibrators, implicit batch leftovers)
REMOVED_IN_11 = ("FP16", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS", "precision",
                 "set_output_type", "reset_precision", "IInt8Calibrator", "IInt8EntropyCalibrator2",
                 "IInt8MinMaxCalibrator", "CalibrationAlgoType", "int8_calibrator", "set_calibration_profile",
                 "set_dynamic_range", "platform_has_fast_fp16", "platform_has_fast_int8", "EXPLICIT_BATCH")


def fake_public_names(module) -> Set[str]:
    """Every public name the fake module binds: module attributes, class members, enum members."""
    names: Set[str] = set()
    for name in dir(module):
        if name.startswith("_"):
            continue
        names.add(name)
        value = getattr(module, name)
        if isinstance(value, type) and issubclass(value, enum.Enum):
            names.update(m.name for m in value)
        elif isinstance(value, type) and not issubclass(value, (bytes, tuple)):
            for member in vars_of(value):
                names.add(member)
                attr = getattr(value, member)
                if isinstance(attr, type) and issubclass(attr, enum.Enum):
                    names.update(m.name for m in attr)
        elif isinstance(value, type):  # IHostMemory (bytes), Dims (tuple): only their own members
            names.update(n for n in value.__dict__ if not n.startswith("_"))
    return names


def vars_of(cls: type) -> Iterable[str]:
    for klass in cls.__mro__:
        if klass is object:
            continue
        for name in klass.__dict__:
            if not name.startswith("_") and hasattr(cls, name):
                yield name


#: what both real modules bind (the runner's and the build's core), then what each adds
BOUND_BY_BOTH = ("num_io_tensors", "get_tensor_name", "get_tensor_mode", "set_input_shape", "set_tensor_address",
                 "execute_async_v3", "build_serialized_network", "set_memory_pool_limit", "IProgressMonitor",
                 "builder_optimization_level", "get_tensor_profile_shape")


@pytest.mark.parametrize("listing, wheel, names, bound, removed", [
    ("names-10.x.txt", "tensorrt_cu12_bindings-10.", NAMES_10, ("IInt8EntropyCalibrator2",), REMOVED_IN_10),
    ("names-11.x.txt", "tensorrt_cu12_bindings-11.", NAMES_11, ("STRONGLY_TYPED", "INT8", "HALF"),
     REMOVED_IN_10 + REMOVED_IN_11),
], ids=["10.x", "11.x"])
def test_names_list_is_the_real_module(listing, wheel, names, bound, removed):
    with open(os.path.join(NAMES_DIR, listing)) as handle:
        head = handle.read(600)
    assert wheel in head and "sha256" in head
    assert len(names) > 2000
    for name in BOUND_BY_BOTH + bound:
        assert name in names, name
    for name in removed:
        assert name not in names, name


def test_supplement_entries_are_justified():
    for name, note in _read_names("names-10.x-supplement.txt").items():
        assert "python/src/" in note and "v10." in note, name
    for name, note in _read_names("names-11.x-supplement.txt").items():
        assert "python/src/" in note and "11.4" in note, name


def test_fake_binds_only_real_10x_names():
    missing = sorted(fake_public_names(make_module("10.x")) - NAMES_10)
    assert missing == [], "the fake binds names the real TensorRT 10 module does not: {}".format(missing)


def test_fake_binds_only_real_11x_names():
    missing = sorted(fake_public_names(make_module("11.x")) - NAMES_11)
    assert missing == [], "the fake binds names the real TensorRT 11 module does not: {}".format(missing)


def test_fake_11x_has_nothing_tensorrt_11_removed():
    trt = make_module("11.x")
    bound = fake_public_names(trt)
    assert sorted(n for n in REMOVED_IN_11 if n in bound) == []
    assert not hasattr(trt.BuilderFlag, "INT8") and not hasattr(trt.BuilderFlag, "BF16")
    assert hasattr(trt.DataType, "INT8") and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    # the same members are there in 10.x, so the 11.x mode really removes them
    assert {"FP16", "int8_calibrator", "platform_has_fast_fp16", "set_output_type"} <= fake_public_names(make_module("10.x"))


def test_fake_86_binds_names_of_85_or_10():
    # 8.6 keeps a few 8.x-only members (EXPLICIT_PRECISION) and has the 10.x additions it introduced
    assert sorted(fake_public_names(make_module("8.6")) - NAMES_10 - set(NAMES_85)) == []


def test_fake_85_binds_only_names_documented_for_85():
    missing = sorted(fake_public_names(make_module("8.5")) - set(NAMES_85))
    assert missing == [], "the 8.5 fake binds names not in names-8.5.txt: {}".format(missing)
    assert all(note.startswith("python/") for note in NAMES_85.values())


# -- the package -----------------------------------------------------------------------------------------
def _package_sources() -> Dict[str, ast.AST]:
    trees = {}
    for root, _, files in os.walk(PACKAGE_DIR):
        for filename in files:
            if filename.endswith(".py"):
                path = os.path.join(root, filename)
                with open(path) as handle:
                    trees[os.path.relpath(path, PACKAGE_DIR)] = ast.parse(handle.read())
    return trees


def _trt_chains(tree: ast.AST) -> Set[str]:
    """Attribute names in chains rooted at the TensorRT module (``trt.X.Y``, ``self._trt.X``)."""
    found: Set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        chain = []
        cur: ast.AST = node
        while isinstance(cur, ast.Attribute):
            chain.append(cur.attr)
            cur = cur.value
        root = cur.id if isinstance(cur, ast.Name) else None
        chain.reverse()
        if root == "trt" or root == "tensorrt":
            found.update(chain)
        elif root == "self" and chain and chain[0] == "_trt":
            found.update(chain[1:])
    return {n for n in found if not n.startswith("__")}


def _feature_strings(tree: ast.AST) -> Set[str]:
    """Names probed with ``hasattr(x, "name")`` / ``has_feature(x, "name")`` in a TensorRT module."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and len(node.args) == 2 and isinstance(node.args[1], ast.Constant):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name in ("hasattr", "has_feature") and isinstance(node.args[1].value, str):
                found.add(node.args[1].value)
    return found


def test_every_tensorrt_name_the_package_names_exists_in_10x():
    used: Dict[str, Set[str]] = {}
    for path, tree in _package_sources().items():
        names = _trt_chains(tree)
        source = ast.dump(tree)
        if "tensorrt" in source or "trtlib" in source or "import_tensorrt" in source:
            names |= _feature_strings(tree)
        if names:
            used[path] = names
    assert "engine/build.py" in used and "gpu/trt.py" in used
    assert {"BuilderFlag", "MemoryPoolType", "builder_optimization_level"} <= used["engine/build.py"]
    unknown = {path: sorted(n for n in names if n not in NAMES_10) for path, names in used.items()}
    assert {p: n for p, n in unknown.items() if n} == {}


# the legacy calibrator is an INT8 path, and TensorRT 11 has none
@pytest.mark.parametrize("mode,legacy,precision", [
    (mode, legacy, precision) for mode in ("8.5", "10.x", "11.x") for precision in ("int8", "fp16")
    for legacy in ((False, True) if precision == "int8" and mode != "11.x" else (False,))])
def test_names_touched_by_a_build_and_a_load_exist_in_that_version(mode, legacy, precision, fake_trt_factory,
                                                                   fake_cuda, reference_models, tmp_path, monkeypatch):
    from changenet_trt.contract import read_contract
    from changenet_trt.engine.calibration import array_batches
    from changenet_trt.engine.prepare import proof_pairs

    monkeypatch.chdir(tmp_path)
    trt = fake_trt_factory(mode)
    model = reference_models["learnable_dynamic"]
    golden, sample = proof_pairs(read_contract(model), 4)
    result = build_engine_file(
        # DLA needs a static batch, and the 11.x fake (11.4.0) has no DLA
        BuildOptions(model=model, precision=precision, profile=BatchProfile(4, 4, 4), workspace_mib=256, opt_level=4,
                     dla_core=None if mode == "11.x" else 0, fp32_layers=["node_of_head.rms"], progress=True,
                     proof_pairs=8, int8_calibrator=legacy),
        calibration_batches=array_batches(golden, sample, 4),
        status_stream=open(os.devnull, "w"),
    )
    engine = trt.Runtime(make_logger(trt)).deserialize_cuda_engine(open(result.engine_path, "rb").read())
    io_tensors(engine)
    profile_shapes(engine, "input_1")
    engine.create_execution_context().get_tensor_shape("output")
    touched = trt._fake.accessed
    assert {"Builder", "OnnxParser", "build_serialized_network", "set_shape"} <= touched
    assert ("int8_calibrator" in touched) == legacy
    assert trt._fake.builds[-1]["strongly_typed"] == (mode != "8.5" and not legacy)
    if not legacy and mode == "8.5":  # flags derived from the typed graph
        assert ("FP16" if precision == "fp16" else "INT8") in trt._fake.builds[-1]["flags"]
        assert ("precision" in touched) == (precision == "fp16")  # float32 islands of the float16 graph
    # enum members are not recorded on access: every flag the plan set must be that version's name
    assert set(result.plan.flags) <= reference_names(mode)
    assert sorted(touched - reference_names(mode)) == []


def reference_names(mode):
    return {"8.5": set(NAMES_85), "10.x": NAMES_10, "11.x": NAMES_11}[mode]


# -- strongly typed builds ------------------------------------------------------------------------------
def _build(trt, onnx_path, network_flags=0, builder_flags=()):
    """Build ``onnx_path`` straight through the fake module, as the package's builder does."""
    logger = make_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags)
    parser = trt.OnnxParser(network, logger)
    with open(onnx_path, "rb") as handle:
        assert parser.parse(handle.read())
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 28)
    for flag in builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    profile = builder.create_optimization_profile()
    for name in ("input_1", "input_2"):
        profile.set_shape(name, (1, 3, 512, 128), (2, 3, 512, 128), (4, 3, 512, 128))
    config.add_optimization_profile(profile)
    return builder.build_serialized_network(network, config)


@pytest.fixture(scope="module")
def typed_models(tmp_path_factory):
    """A float16 reference model (float32 I/O) made by engine/precision.py."""
    import onnx

    from changenet_trt.engine.fp16 import convert_fp16
    from changenet_trt.models.reference import build_reference_model

    root = tmp_path_factory.mktemp("typed")
    fp16 = str(root / "fp16.onnx")
    onnx.save(convert_fp16(build_reference_model(kind="learnable")), fp16)
    return {"fp16": fp16}


def test_11x_builds_strongly_typed_from_the_onnx_types_with_no_precision_hint(fake_trt_factory, fake_cuda,
                                                                                typed_models):
    trt = fake_trt_factory("11.x")
    plan = _build(trt, typed_models["fp16"])
    assert plan is not None
    record = trt._fake.builds[-1]
    assert record["result"] == "ok" and record["strongly_typed"]
    assert record["typed_precision"] == {"float16": True, "qdq": False}
    assert not {"FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS"} & set(record["flags"])
    assert record["calibrator_calls"] == [] and record["precision_constraints"] == {}
    engine = trt.Runtime(make_logger(trt)).deserialize_cuda_engine(bytes(plan))
    assert [t["dtype"] for t in io_tensors(engine)] == ["float32", "float32", "float32"]  # typed model keeps float32 I/O
    profile_shapes(engine, "input_1")
    assert sorted(trt._fake.accessed - NAMES_11) == []


def test_10x_strongly_typed_network_refuses_the_fp16_flag(fake_trt_factory, typed_models):
    trt = fake_trt_factory("10.x")
    strongly = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert _build(trt, typed_models["fp16"], strongly, ["FP16"]) is None
    assert "cannot be set for a strongly typed network" in trt._fake.builds[-1]["result"]
    assert _build(trt, typed_models["fp16"], strongly) is not None
    assert trt._fake.builds[-1]["typed_precision"]["float16"]
    # a weakly typed 10.x network still takes the flag
    assert _build(trt, typed_models["fp16"], 0, ["FP16"]) is not None
    assert not trt._fake.builds[-1]["strongly_typed"]
