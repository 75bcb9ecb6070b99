"""Export a ChangeNet model as an NVIDIA Triton Inference Server model repository.

Layout written (``REPO/NAME`` appears whole or not at all)::

    REPO/NAME/config.pbtxt          both inputs by name, NCHW dims without the batch, max batch,
                                    dynamic batching, instance groups, the contract as parameters
    REPO/NAME/1/model.plan          platform tensorrt_plan   (+ model.plan.json, the sidecar)
    REPO/NAME/1/model.onnx          platform onnxruntime_onnx, and python
    REPO/NAME/1/model.py            platform python: ONNX Runtime on the CPU (what a server from
                                    PyPI's nvidia-pytriton wheel, python backend only, can serve)

A static-batch ONNX (TAO's default export of 16) is made dynamic with
:func:`changenet_trt.engine.prepare.prepare_model` first: Triton batches only over a dynamic
first dimension. A TensorRT engine only loads in the TensorRT release that built it, so its
sidecar decides which Triton release can serve it (see :func:`tensorrt_hint`).

``config.pbtxt`` is checked strictly before anything is written: it is parsed into Triton's own
``ModelConfig`` protobuf (``tritonclient.grpc.model_config_pb2``, the ``triton`` extra).
"""

import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from google.protobuf import text_format

from changenet_trt.contract import ContractNames, ModelContract, engine_tensors, make_contract, read_contract
from changenet_trt.engine.prepare import add_uint8_input, prepare_model
from changenet_trt.errors import BuildError, EngineError, InputError, optional_import
from changenet_trt.files import check_output_dir, file_sha256
from changenet_trt.runtime.triton import CONTRACT_PARAMETERS, PARAM_OUTPUT_SHAPE
from changenet_trt.sidecar import read_sidecar, same_tensorrt_release, sidecar_path

PLATFORMS = ("tensorrt_plan", "onnxruntime_onnx", "python")
MODEL_FILES = {"tensorrt_plan": "model.plan", "onnxruntime_onnx": "model.onnx", "python": "model.onnx"}
#: instance kind per platform: TensorRT needs the GPU; ONNX Runtime takes the GPU when the server
#: has one; the python model below runs ONNX Runtime on the CPU
INSTANCE_KINDS = {"tensorrt_plan": "KIND_GPU", "onnxruntime_onnx": "KIND_AUTO", "python": "KIND_CPU"}
#: how long the scheduler may hold a request to merge it with others (microseconds)
DEFAULT_QUEUE_DELAY_US = 2000
TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "uint8": "TYPE_UINT8"}

#: Triton's TensorRT per container release (NVIDIA's Frameworks Support Matrix); an engine needs the
#: same TensorRT major.minor.patch as the server. Jetson: JetPack's own tritonserver release.
#: TensorRT 10.3 is not listed: the only NVIDIA table found for it (Triton's
#: docs/introduction/compatibility.md) covers the 24.08-trtllm-python-py3 image, not -py3.
TRITON_TENSORRT = (
    ("23.01", "8.5.2"),
    ("24.01", "8.6.1"),
    ("24.05", "10.0.1"),
)
#: model names Triton serves and clients reach: its HTTP front end matches ``/v2/models/([^/]+)``
#: on the raw request path (triton-inference-server/server, src/http_server.cc, ``model_regex_``),
#: so a name must survive a URL unescaped (no space, ``#``, ``?``, ``%``, non-ASCII), and it is a
#: folder name (no ``/``; a leading ``.`` hides it). The length leaves room, under the 255-byte
#: NAME_MAX of Linux file systems, for the staging folder ``.<name>.<random>.tmp``.
MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}\Z")

PYTHON_MODEL = '''"""Triton python-backend model written by changenet-trt: ONNX Runtime on the CPU.

Dynamic batching hands execute() several requests at once; they run as one batch.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.sample_input = params["changenet.sample_input"]
        self.golden_input = params["changenet.golden_input"]
        self.output = params["changenet.output"]
        threads = int(params.get("changenet.ort_threads", "0"))
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads > 0:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        self.session = ort.InferenceSession(
            os.path.join(version_dir, "model.onnx"), options, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        names = (self.sample_input, self.golden_input)
        feeds = [[pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in names] for r in requests]
        sizes = [f[0].shape[0] for f in feeds]
        if len(requests) == 1:
            batch = dict(zip(names, feeds[0]))
        else:
            batch = {n: np.concatenate([f[i] for f in feeds], axis=0) for i, n in enumerate(names)}
        raw = self.session.run([self.output], batch)[0]
        responses, start = [], 0
        for size in sizes:
            part = np.ascontiguousarray(raw[start:start + size])
            start += size
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output, part)]))
        return responses
'''


@dataclass
class RepositoryReport:
    """What :func:`write_model_repository` wrote: the model folder, its config text and notes."""

    model_dir: str
    name: str
    platform: str
    max_batch: int
    config_text: str
    contract: ModelContract
    notes: List[str] = field(default_factory=list)

    def summary_lines(self) -> List[str]:
        files = []
        for root, _, names in os.walk(self.model_dir):
            files += [os.path.relpath(os.path.join(root, n), self.model_dir) for n in sorted(names)]
        lines = ["wrote the Triton model '{}' ({}, max batch {}) to {}".format(
            self.name, self.platform, self.max_batch, self.model_dir)]
        lines += ["  " + f for f in sorted(files)]
        lines += ["  note: " + n for n in self.notes]
        return lines


def model_config_class() -> Any:
    """Triton's ``ModelConfig`` protobuf class (``tritonclient``, the ``triton`` extra)."""
    return optional_import("tritonclient.grpc.model_config_pb2", "checking a Triton config.pbtxt").ModelConfig


def parse_config(text: str) -> Any:
    """Parse ``config.pbtxt`` text strictly into a ``ModelConfig`` (BuildError on any unknown field or typo)."""
    config = model_config_class()()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise BuildError("the Triton config is not a valid ModelConfig", found=str(exc)) from None
    return config


def _pbtxt_string(value: str) -> str:
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def config_text(
    name: str,
    platform: str,
    contract: ModelContract,
    max_batch: int,
    instances: int,
    parameters: Dict[str, str],
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
) -> str:
    """The ``config.pbtxt`` text for a dynamic-batch ``contract``.

    A euclidean ``[B]`` output is declared ``dims: [1]`` with ``reshape: { shape: [] }`` (Triton
    cannot declare a tensor that is only the batch); ``[B,1]`` is ``dims: [1]``; logits ``[2]``.
    """
    c, h, w = contract.input_shape
    dtype = TRITON_DTYPES[contract.input_dtype]
    lines = ["# written by changenet-trt triton-repo", "name: {}".format(_pbtxt_string(name))]
    if platform == "python":
        lines.append('backend: "python"')
    else:
        lines.append("platform: {}".format(_pbtxt_string(platform)))
    lines.append("max_batch_size: {}".format(max_batch))
    lines.append("input [")
    entries = []
    for role, tensor in (("sample", contract.sample_input), ("golden", contract.golden_input)):
        entries.append(
            "  {{  # the {} image\n    name: {}\n    data_type: {}\n    format: FORMAT_NCHW\n"
            "    dims: [ {}, {}, {} ]\n  }}".format(role, _pbtxt_string(tensor), dtype, c, h, w))
    lines.append(",\n".join(entries))
    lines.append("]")
    out_dims = [d for d in contract.output_shape[1:]]
    if not out_dims:
        dims, reshape = "[ 1 ]", "\n    reshape: { shape: [ ] }"
    else:
        dims, reshape = "[ {} ]".format(", ".join(str(d) for d in out_dims)), ""
    lines.append("output [\n  {{  # {} output\n    name: {}\n    data_type: TYPE_FP32\n    dims: {}{}\n  }}\n]".format(
        contract.output_kind, _pbtxt_string(contract.output), dims, reshape))
    # no preferred_batch_size: Triton's batcher guide (docs/user_guide/batcher.md, "Preferred Batch
    # Sizes") advises it only for TensorRT models with several optimisation profiles; every model
    # written here has one profile (or none), so batches grow to max_batch_size instead
    lines.append("dynamic_batching {{\n  max_queue_delay_microseconds: {}\n}}".format(queue_delay_us))
    lines.append("instance_group [\n  {{\n    count: {}\n    kind: {}\n  }}\n]".format(instances, INSTANCE_KINDS[platform]))
    for key in sorted(parameters):
        lines.append("parameters {{\n  key: {}\n  value: {{ string_value: {} }}\n}}".format(
            _pbtxt_string(key), _pbtxt_string(parameters[key])))
    return "\n".join(lines) + "\n"


def contract_parameters(contract: ModelContract, normalization: Optional[str]) -> Dict[str, str]:
    """The contract a client needs, as Triton model parameters (all strings)."""
    values = {
        "sample_input": contract.sample_input,
        "golden_input": contract.golden_input,
        "output": contract.output,
        "output_kind": contract.output_kind,
        "cutoff": repr(float(contract.cutoff)),
        "preprocess": normalization or contract.preprocess or "tao",
        "input_dtype": contract.input_dtype,
    }
    params = {CONTRACT_PARAMETERS[k]: v for k, v in values.items()}
    params[PARAM_OUTPUT_SHAPE] = ",".join(str(d) for d in contract.output_shape[1:])
    return params


def tensorrt_hint(trt_version: str) -> str:
    """Which Triton release serves an engine built with ``trt_version``."""
    known = [release for release, trt in TRITON_TENSORRT if same_tensorrt_release(trt, trt_version)]
    text = ("the engine was built with TensorRT {0} and only loads in a Triton whose TensorRT is {0} "
            "(NVIDIA's Frameworks Support Matrix lists the TensorRT of each nvcr.io/nvidia/tritonserver:<yy.mm>-py3; "
            "on a Jetson, the JetPack release's tritonserver)".format(trt_version))
    if known:
        text += "; e.g. nvcr.io/nvidia/tritonserver:{}-py3".format(known[0])
    return text + "; else build the engine inside that container with `changenet-trt build`"


def _engine_contract(engine: str) -> Tuple[ModelContract, Any]:
    """Contract and sidecar of an engine, read from its sidecar (no TensorRT needed)."""
    meta = read_sidecar(engine)
    inputs, outputs = engine_tensors(meta.tensors)
    contract = make_contract(inputs, outputs, meta.names)
    return contract, meta


def write_model_repository(
    model: str,
    out_dir: str,
    name: str = "changenet",
    platform: str = "python",
    max_batch: int = 16,
    instances: int = 1,
    uint8_input: bool = False,
    normalization: Optional[str] = None,
    overwrite: bool = False,
    ort_threads: int = 0,
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
    names: Optional[ContractNames] = None,
) -> RepositoryReport:
    """Write ``out_dir/name`` as a Triton model (see the module docstring for the layout).

    ``model``: an ONNX file (``onnxruntime_onnx``, ``python``), or a TensorRT engine with its
    sidecar (``tensorrt_plan``). ``max_batch``: Triton's ``max_batch_size`` (an engine's profile
    max caps it). ``instances``: model instances (parallel executions). ``uint8_input``: the
    ONNX gets the ``normalization`` preset (default: the model's, else ``tao``) in its graph and
    clients send uint8 pixels. ``ort_threads``: ONNX Runtime threads of the python model (0 =
    its default). ``names``: tensor-name and output-kind overrides of an ONNX model. An existing
    ``out_dir/name`` is refused unless ``overwrite``.
    """
    if platform not in PLATFORMS:
        raise InputError("unknown Triton platform", expected=" or ".join(PLATFORMS), found=repr(platform))
    if not isinstance(name, str) or not MODEL_NAME.match(name):
        raise InputError("the Triton model name must be a name Triton serves and a URL reaches",
                         expected="1-200 ASCII letters, digits, '_', '-' or '.', not starting with '.' or '-'",
                         found=repr(name) if len(str(name)) <= 60 else "{!r}... ({} characters)".format(
                             str(name)[:40], len(str(name))))
    for value, what in ((max_batch, "max batch"), (instances, "instances")):
        if not isinstance(value, int) or value < 1:
            raise InputError("{} must be a positive integer".format(what), found=value)
    source = os.fspath(model)
    if not os.path.isfile(source):
        raise InputError("model file not found: {}".format(source))
    is_engine = platform == "tensorrt_plan"
    if is_engine and source.lower().endswith(".onnx"):
        raise InputError("the tensorrt_plan platform serves a TensorRT engine",
                         expected="an .engine/.plan built with `changenet-trt build` (or choose onnxruntime_onnx)",
                         found=source)
    if not is_engine and not source.lower().endswith(".onnx"):
        raise InputError("the {} platform serves an ONNX model".format(platform), expected="a .onnx file",
                         found=source)
    if is_engine and uint8_input:
        raise InputError("--uint8-input rewrites the ONNX graph; an engine is already built",
                         expected="prepare the ONNX with add_uint8_input, then build the engine")
    repo = check_output_dir(out_dir, "model repository folder", inputs=[source])
    target = os.path.join(repo, name)
    if os.path.exists(target) and not overwrite:
        raise InputError("the model folder {} already exists".format(target),
                         expected="a new model name (--name), or overwrite=True (--overwrite) to replace it")
    model_config_class()  # fail on a missing tritonclient before any work
    names = ContractNames.of(names)
    os.makedirs(repo, exist_ok=True)
    staging = tempfile.mkdtemp(prefix="." + name + ".", suffix=".tmp", dir=repo)
    notes: List[str] = []
    try:
        umask = os.umask(0)
        os.umask(umask)
        # mkdtemp makes it 0700; a server running as another user must read the model folder
        os.chmod(staging, 0o777 & ~umask)
        version_dir = os.path.join(staging, "1")
        os.makedirs(version_dir)
        model_path = os.path.join(version_dir, MODEL_FILES[platform])
        params: Dict[str, str] = {}
        if is_engine:
            contract, meta = _engine_contract(source)
            profile_max = int(meta.profile.get("max", max_batch)) if meta.profile else max_batch
            if contract.static_batch is not None:
                raise BuildError("the engine has a static batch; Triton batches only over a dynamic batch",
                                 expected="an engine built from a dynamic-batch ONNX", found=contract.static_batch)
            if max_batch > profile_max:
                raise InputError("the max batch exceeds the engine's optimisation profile",
                                 expected="<= {}".format(profile_max), found=max_batch)
            if meta.engine_sha256 and file_sha256(source) != meta.engine_sha256:
                raise EngineError("the engine {} is not the one its sidecar describes (sha256 differs): it was "
                                  "replaced or damaged after the build".format(source),
                                  expected="the engine `changenet-trt build` wrote with this sidecar")
            shutil.copyfile(source, model_path)
            shutil.copyfile(sidecar_path(source), sidecar_path(model_path))
            params["changenet.tensorrt_version"] = meta.trt_version
            notes.append(tensorrt_hint(meta.trt_version))
            preprocess = normalization or meta.preprocess
        else:
            original = read_contract(source, names)
            prepared = os.path.join(staging, "prepared.onnx")
            report = prepare_model(source, prepared, names=names)
            if report.rewritten:
                notes.append("static batch {} made dynamic (proven at batches {})".format(
                    report.original_batch, ", ".join(str(c.batch) for c in report.checks)))
            preprocess = normalization or original.preprocess or "tao"
            if uint8_input:
                add_uint8_input(prepared, model_path, normalization=preprocess, names=names)
                os.unlink(prepared)
                notes.append("inputs are uint8 RGB pixels; the graph applies '{}' normalisation".format(preprocess))
            else:
                os.replace(prepared, model_path)
            contract = read_contract(model_path, names)
            if platform == "python":
                with open(os.path.join(version_dir, "model.py"), "w") as handle:
                    handle.write(PYTHON_MODEL)
                params["changenet.ort_threads"] = str(int(ort_threads))
        params.update(contract_parameters(contract, preprocess))
        text = config_text(name, platform, contract, max_batch, instances, params, queue_delay_us)
        check_config(parse_config(text), contract, max_batch)
        with open(os.path.join(staging, "config.pbtxt"), "w") as handle:
            handle.write(text)
        if os.path.exists(target):
            old = tempfile.mkdtemp(prefix="." + name + ".", suffix=".old", dir=repo)
            os.replace(target, os.path.join(old, name))
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return RepositoryReport(target, name, platform, max_batch, text, contract, notes)


def check_config(config: Any, contract: ModelContract, max_batch: int) -> None:
    """What Triton would refuse at load time, checked on the parsed ``ModelConfig``."""
    inputs = [i.name for i in config.input]
    if sorted(inputs) != sorted(contract.input_names()):
        raise BuildError("config inputs do not match the model", expected=sorted(contract.input_names()), found=inputs)
    if config.max_batch_size != max_batch or [o.name for o in config.output] != [contract.output]:
        raise BuildError("config does not match the model",
                         expected="max batch {}, output {}".format(max_batch, contract.output),
                         found="max batch {}, outputs {}".format(config.max_batch_size, [o.name for o in config.output]))
    if list(config.dynamic_batching.preferred_batch_size):
        raise BuildError("a single-profile model gets no preferred batch size (Triton's batcher guide)",
                         found=list(config.dynamic_batching.preferred_batch_size))


def describe(repo_model_dir: str) -> Sequence[str]:
    """The files of a written model folder, relative to it (for reports and tests)."""
    out = []
    for root, _, names in os.walk(repo_model_dir):
        out += [os.path.relpath(os.path.join(root, n), repo_model_dir) for n in names]
    return sorted(out)
