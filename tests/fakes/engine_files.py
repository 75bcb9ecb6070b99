"""Engine files made from the test doubles, with the sidecar a build writes next to them.

Shared by the runner, reliability, CUDA-tier and Triton tests, which live in different folders:
a test module is never imported by another one (each folder is its own import root).
"""

import hashlib

from changenet_trt.contract import read_contract
from changenet_trt.sidecar import EngineMetadata, write_sidecar

from fakes.tensorrt import _plan as fake_plan
from fakes.tensorrt import make_fake_engine


def sidecar_tensors(plan):
    """The sidecar's ``tensors`` and ``profile_shapes`` of a fake plan (as a build writes them)."""
    header, _ = fake_plan.decode(plan)
    tensors = [{"name": t["name"], "mode": t["mode"].lower(), "shape": list(t["shape"]), "dtype": t["dtype"]}
               for t in header["tensors"]]
    return tensors, {name: [list(s) for s in shapes] for name, shapes in header["profiles"][0].items()}


def write_engine(tmp_path, gpu, onnx_path, name="model", sidecar=True, fp16=False, describe=True, **kwargs):
    """A fake engine for ``onnx_path`` built by ``gpu``'s TensorRT for its GPU, with its sidecar
    (``describe``: listing the engine's tensors, so a runner is made without deserializing)."""
    kwargs.setdefault("version", gpu.trt.__version__)
    plan = make_fake_engine(onnx_path, fp16=fp16, **kwargs)
    path = str(tmp_path / (name + ".engine"))
    with open(path, "wb") as handle:
        handle.write(plan)
    if sidecar:
        contract = read_contract(onnx_path)
        with open(onnx_path, "rb") as handle:
            onnx_sha = hashlib.sha256(handle.read()).hexdigest()
        static = contract.static_batch
        meta = EngineMetadata(
            trt_version=kwargs["version"],
            precision="fp16" if fp16 else "fp32",
            profile={"min": static or kwargs.get("min_batch", 1), "opt": static or kwargs.get("opt_batch", 16),
                     "max": static or kwargs.get("max_batch", 32)},
            sample_input=contract.sample_input,
            golden_input=contract.golden_input,
            output=contract.output,
            output_kind=contract.output_kind,
            onnx_sha256=onnx_sha,
            gpu_name=gpu.device.name,
            compute_capability=list(kwargs.get("compute_capability") or gpu.device.compute_capability),
            preprocess=contract.preprocess or "tao",
            engine_sha256=hashlib.sha256(plan).hexdigest(),
            flags={"recommended_cutoff": contract.recommended_cutoff,
                   "version_compatible": kwargs.get("version_compatible", False),
                   "exclude_lean_runtime": kwargs.get("exclude_lean_runtime", False)},
        )
        if describe:
            meta.tensors, meta.profile_shapes = sidecar_tensors(plan)
        write_sidecar(path, meta)
    return path



def opaque_engine(tmp_path, kind="euclidean"):
    """An engine file (opaque bytes: Triton's TensorRT reads it, not us) with its sidecar."""
    engine = str(tmp_path / "model.engine")
    with open(engine, "wb") as handle:
        handle.write(b"plan bytes")
    out_shape = [-1] if kind == "euclidean" else [-1, 2]
    tensors = [{"name": n, "mode": "INPUT", "shape": [-1, 3, 512, 128], "dtype": "float32"} for n in ("input_1", "input_2")]
    tensors.append({"name": "output", "mode": "OUTPUT", "shape": out_shape, "dtype": "float32"})
    write_sidecar(engine, EngineMetadata(
        trt_version="10.3.0", precision="fp16", profile={"min": 1, "opt": 16, "max": 32}, sample_input="input_1",
        golden_input="input_2", output="output", output_kind=kind, onnx_sha256="0" * 64, tensors=tensors))
    return engine
