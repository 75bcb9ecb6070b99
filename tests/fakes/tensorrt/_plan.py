"""The fake serialized engine ("plan") format and the ONNX Runtime execution behind it.

A fake plan is ``MAGIC | uint32 header length | JSON header | ONNX bytes | sha256 of all
before``. The header records what a real plan encodes: the TensorRT version that built it,
the device's compute capability, I/O tensors (names, modes, shapes with -1 for dynamic dims,
dtypes), the optimisation profiles, precision flags and the layers kept in FP32. Truncated
or altered bytes fail the checksum, as a corrupt real plan fails to deserialize.
"""

import hashlib
import json
import struct
import threading
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

MAGIC = b"FAKE-TRT-PLAN\x00"
_DIGEST = 32

_SESSIONS: Dict[str, Any] = {}
_SESSIONS_LOCK = threading.Lock()


class PlanError(ValueError):
    """The bytes are not a (complete, unaltered) fake plan."""


def encode(header: Dict[str, Any], onnx_bytes: bytes) -> bytes:
    head = json.dumps(header, sort_keys=True).encode("utf-8")
    body = MAGIC + struct.pack("<I", len(head)) + head + onnx_bytes
    return body + hashlib.sha256(body).digest()


def decode(data: bytes) -> Tuple[Dict[str, Any], bytes]:
    data = bytes(data)
    if not data.startswith(MAGIC):
        raise PlanError("not a serialized engine (magic tag mismatch)")
    if len(data) < len(MAGIC) + 4 + _DIGEST:
        raise PlanError("serialized engine is truncated ({} bytes)".format(len(data)))
    body, digest = data[:-_DIGEST], data[-_DIGEST:]
    if hashlib.sha256(body).digest() != digest:
        raise PlanError("serialized engine is truncated or corrupt (checksum mismatch, {} bytes)".format(len(data)))
    (head_len,) = struct.unpack("<I", body[len(MAGIC): len(MAGIC) + 4])
    start = len(MAGIC) + 4
    header = json.loads(body[start: start + head_len].decode("utf-8"))
    return header, body[start + head_len:]


def onnx_io(onnx_bytes: bytes) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """Graph inputs/outputs of an ONNX model: ``{"name", "shape" (-1 = dynamic), "dtype"}``."""
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    inits = {i.name for i in model.graph.initializer}

    def describe(vi: Any) -> Dict[str, Any]:
        tt = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tt.shape.dim]
        dtype = str(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)))
        return {"name": vi.name, "shape": shape, "dtype": dtype}

    inputs = [describe(vi) for vi in model.graph.input if vi.name not in inits]
    outputs = [describe(vi) for vi in model.graph.output]
    return inputs, outputs


def session(onnx_bytes: bytes) -> Any:
    """A cached single-threaded ONNX Runtime session for the embedded model."""
    key = hashlib.sha256(onnx_bytes).hexdigest()
    with _SESSIONS_LOCK:
        sess = _SESSIONS.get(key)
        if sess is None:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            sess = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
            _SESSIONS[key] = sess
    return sess


def run(onnx_bytes: bytes, feeds: Dict[str, np.ndarray], fp16_compute: bool) -> Dict[str, np.ndarray]:
    """Run the model; with ``fp16_compute`` the outputs are rounded through float16 as an
    FP16 engine's would be. Inputs are cast to the ONNX model's own input dtype."""
    sess = session(onnx_bytes)
    typed = {}
    for meta in sess.get_inputs():
        want = np.float16 if meta.type == "tensor(float16)" else np.float32
        typed[meta.name] = np.ascontiguousarray(feeds[meta.name], dtype=want)
    names = [o.name for o in sess.get_outputs()]
    outs = sess.run(names, typed)
    result = {}
    for name, value in zip(names, outs):
        value = np.asarray(value)
        if fp16_compute and value.dtype == np.float32:
            value = value.astype(np.float16).astype(np.float32)
        result[name] = value
    return result


def typed_precision(onnx_bytes: bytes) -> Dict[str, bool]:
    """What a strongly typed network runs in, read off the ONNX graph: ``float16`` (any float16
    weight, Cast to float16 or Constant) and ``qdq`` (any QuantizeLinear/DequantizeLinear)."""
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    half = onnx.TensorProto.FLOAT16
    float16 = any(init.data_type == half for init in model.graph.initializer)
    for node in model.graph.node:
        for attr in node.attribute:
            if (attr.name == "to" and attr.i == half) or (attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == half):
                float16 = True
    qdq = any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in model.graph.node)
    return {"float16": float16, "qdq": qdq}


def volume(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def header_for(
    onnx_bytes: bytes,
    trt_version: str,
    compute_capability: Sequence[int],
    device_name: str,
    profiles: List[Dict[str, List[List[int]]]],
    io_dtypes: Optional[Dict[str, str]] = None,
    flags: Sequence[str] = (),
    fp32_layers: Sequence[str] = (),
    dla_core: Optional[int] = None,
    calibrated: bool = False,
    num_layers: int = 0,
    workspace: Optional[int] = None,
) -> Dict[str, Any]:
    """The JSON header of a fake plan for ``onnx_bytes``."""
    inputs, outputs = onnx_io(onnx_bytes)
    io_dtypes = dict(io_dtypes or {})
    tensors = []
    for mode, group in (("INPUT", inputs), ("OUTPUT", outputs)):
        for t in group:
            tensors.append(
                {"name": t["name"], "mode": mode, "shape": t["shape"], "dtype": io_dtypes.get(t["name"], t["dtype"])}
            )
    return {
        "trt_version": trt_version,
        "compute_capability": list(compute_capability),
        "device_name": device_name,
        "tensors": tensors,
        "profiles": profiles,
        "flags": sorted(flags),
        "fp32_layers": list(fp32_layers),
        "dla_core": dla_core,
        "calibrated": calibrated,
        "num_layers": num_layers,
        "workspace": workspace,
        "onnx_sha256": hashlib.sha256(onnx_bytes).hexdigest(),
    }
