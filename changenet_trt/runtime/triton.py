"""Triton Inference Server backend: the same runner interface, the model on one or more servers.

``changenet_trt.load("grpc://HOST:8001/NAME")`` (or ``http://HOST:8000/NAME``, an optional
``/VERSION`` after the name) reads the model's input names, dims, dtype, output and max batch from
the server's model config; a repository written by ``engine.triton_repo`` also carries the
contract (output kind, cutoff, preprocessing) as model parameters. Several URLs spread the batches
over several servers (slot k goes to server k mod n).

Each buffer slot has its own input/output buffers, its own worker thread and its own client
(made on that thread: the HTTP client is gevent-based and stays on the thread that made it), and
each submitted batch is one request, so several requests are in flight. When the server is on this
host (127.0.0.1, localhost, ::1) the buffers live in POSIX shared memory registered with the
server: only the request header crosses the socket. If registration fails (a server in a
container without the host's /dev/shm, say) the runner sends the bytes instead.

``tritonclient`` (the ``triton`` extra) is imported only when a runner is made; the servers are
first contacted when it activates (the contract and max batch are read then).
"""

import os
import uuid
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union
from urllib.parse import urlsplit

import numpy as np

from changenet_trt.contract import (
    CONTRACT_NAME_KEYS,
    META_CUTOFF,
    META_PREPROCESS,
    ContractNames,
    ModelContract,
    TensorInfo,
    make_contract,
)
from changenet_trt.errors import ChangeNetError, InputError, optional_import
from changenet_trt.runtime.base import Runner, SlotFutures, Timing, check_batch_size, now_ms
from changenet_trt.threads import ForkSafePool

SCHEMES = {"grpc": 8001, "http": 8000}
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
DEFAULT_TIMEOUT_S = 60.0
#: model parameters a repository written by changenet-trt carries (contract field -> key)
CONTRACT_PARAMETERS = {
    "sample_input": "changenet.sample_input",
    "golden_input": "changenet.golden_input",
    "output": "changenet.output",
    "output_kind": "changenet.output_kind",
    "cutoff": "changenet.cutoff",
    "preprocess": "changenet.preprocess",
    "input_dtype": "changenet.input_dtype",
}
PARAM_OUTPUT_SHAPE = "changenet.output_shape"
TRITON_TO_NUMPY = {"TYPE_FP32": "float32", "TYPE_FP16": "float16", "TYPE_UINT8": "uint8"}
NUMPY_TO_WIRE = {"float32": "FP32", "float16": "FP16", "uint8": "UINT8"}


class TritonError(ChangeNetError):
    """The Triton server is unreachable, lacks the model, refused a request or timed out."""


def is_triton_url(path: str) -> bool:
    """Whether ``path`` names a model on a Triton server (``grpc://`` or ``http://``)."""
    return any(str(path).lower().startswith(scheme + "://") for scheme in SCHEMES)


@dataclass(frozen=True)
class Endpoint:
    """One model on one server: ``scheme`` grpc/http, ``host``, ``port``, ``model``, ``version`` ("" = latest)."""

    scheme: str
    host: str
    port: int
    model: str
    version: str = ""

    @property
    def address(self) -> str:
        host = "[{}]".format(self.host) if ":" in self.host else self.host
        return "{}:{}".format(host, self.port)

    @property
    def url(self) -> str:
        return "{}://{}/{}{}".format(self.scheme, self.address, self.model, "/" + self.version if self.version else "")

    @property
    def is_local(self) -> bool:
        return self.host.lower() in LOCAL_HOSTS


def parse_url(url: str) -> Endpoint:
    """``grpc://HOST[:PORT]/MODEL[/VERSION]`` or ``http://...`` (default ports 8001 / 8000)."""
    parts = urlsplit(str(url))
    scheme = parts.scheme.lower()
    segments = [s for s in parts.path.split("/") if s]
    try:
        port = parts.port
    except ValueError:
        port = -1
    if scheme not in SCHEMES or not parts.hostname or not 1 <= len(segments) <= 2 or port == -1 or parts.query:
        raise InputError("cannot read the Triton model URL",
                         expected="grpc://HOST:8001/MODEL or http://HOST:8000/MODEL (optionally /VERSION)",
                         found=repr(url))
    if len(segments) == 2 and not segments[1].isdigit():
        raise InputError("the model version in a Triton URL is a number", found=repr(url))
    return Endpoint(scheme, parts.hostname, port or SCHEMES[scheme], segments[0],
                    segments[1] if len(segments) == 2 else "")


def _import(scheme: str) -> Any:
    return optional_import("tritonclient.grpc" if scheme == "grpc" else "tritonclient.http", "the Triton backend")


def _shared_memory() -> Any:
    return optional_import("tritonclient.utils.shared_memory", "Triton's system shared memory")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


class _Connection:
    """One client of one endpoint, with the calls the runner needs and clear errors."""

    def __init__(self, endpoint: Endpoint, timeout_s: float) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.module = _import(endpoint.scheme)
        try:
            if endpoint.scheme == "grpc":
                self.client = self.module.InferenceServerClient(url=endpoint.address)
            else:
                self.client = self.module.InferenceServerClient(
                    url=endpoint.address, connection_timeout=timeout_s, network_timeout=timeout_s)
        except Exception as exc:
            raise TritonError("cannot make a Triton client for {}".format(endpoint.url), found=_first_line(exc)) from None

    def call(self, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
        if self.endpoint.scheme == "grpc" and method != "infer":
            kwargs.setdefault("client_timeout", self.timeout_s)
        try:
            return getattr(self.client, method)(*args, **kwargs)
        except Exception as exc:
            text = _first_line(exc)
            if "deadline" in text.lower() or "timed out" in text.lower() or "timeout" in type(exc).__name__.lower():
                raise TritonError("the Triton server at {} did not answer {} within {:g} s".format(
                    self.endpoint.address, what, self.timeout_s), found=text) from None
            raise TritonError("{} failed on the Triton server at {}".format(what, self.endpoint.address),
                              found=text) from None

    def check_ready(self) -> None:
        ep = self.endpoint
        try:
            live = self.client.is_server_live(**({"client_timeout": self.timeout_s} if ep.scheme == "grpc" else {}))
        except Exception as exc:
            raise TritonError("no Triton server answers at {} ({})".format(ep.address, ep.scheme),
                              expected="tritonserver listening there ({} port {} by default)".format(
                                  ep.scheme, SCHEMES[ep.scheme]), found=_first_line(exc)) from None
        if not live:
            raise TritonError("the Triton server at {} is not live".format(ep.address))
        if not self.call("the model-ready check", "is_model_ready", ep.model, ep.version):
            index = self.call("listing the models", "get_model_repository_index")
            if not isinstance(index, list):  # grpc: a protobuf message
                index = [{"name": m.name, "version": m.version, "state": m.state} for m in index.models]
            states = ", ".join("{}{} {}".format(m.get("name"), "/" + m["version"] if m.get("version") else "",
                                                m.get("state") or "unloaded") for m in index) or "no models"
            raise TritonError("the model '{}' is not ready on the Triton server at {}".format(ep.model, ep.address),
                              expected="a loaded model named '{}'{}".format(
                                  ep.model, " version " + ep.version if ep.version else ""),
                              found=states)

    def model_config(self) -> Dict[str, Any]:
        ep = self.endpoint
        if ep.scheme == "grpc":
            return self.call("reading the model config", "get_model_config", ep.model, ep.version, as_json=True)["config"]
        return self.call("reading the model config", "get_model_config", ep.model, ep.version)

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # closing a client of a server that went away must not hide the real error
            pass


def contract_from_config(config: Dict[str, Any], names: Optional[ContractNames] = None) -> Tuple[ModelContract, int]:
    """``(contract, max_batch)`` from a Triton model config (as JSON).

    Dims come from the config (a ``reshape`` is what the model itself produces); names, output
    kind, cutoff and preprocessing from the ``changenet.*`` parameters when present, else TAO's
    defaults and the output shape. ``names``: the user's overrides, which win over the parameters.
    """
    params = {k: (v or {}).get("string_value", "") for k, v in (config.get("parameters") or {}).items()}
    max_batch = int(config.get("max_batch_size", 0))
    lead: Tuple[Optional[int], ...] = (None,) if max_batch > 0 else ()

    def info(tensor: Dict[str, Any]) -> TensorInfo:
        dims = tensor.get("dims", [])
        reshape = tensor.get("reshape")
        if reshape is not None:
            dims = reshape.get("shape", [])
        dtype = TRITON_TO_NUMPY.get(tensor.get("data_type", ""), str(tensor.get("data_type")))
        return TensorInfo(tensor["name"], lead + tuple(int(d) for d in dims), dtype)

    inputs = [info(t) for t in config.get("input", [])]
    outputs = [info(t) for t in config.get("output", [])]
    metadata = {}
    if params.get(CONTRACT_PARAMETERS["cutoff"]):
        metadata[META_CUTOFF] = params[CONTRACT_PARAMETERS["cutoff"]]
    if params.get(CONTRACT_PARAMETERS["preprocess"]):
        metadata[META_PREPROCESS] = params[CONTRACT_PARAMETERS["preprocess"]]
    recorded = ContractNames.of({k: params.get(CONTRACT_PARAMETERS[k]) for k in CONTRACT_NAME_KEYS})
    contract = make_contract(inputs, outputs, ContractNames.of(names).or_else(recorded), metadata=metadata)
    if max_batch < 1:
        # max_batch_size 0: the config's dims include the batch, which is then fixed
        return contract, int(contract.static_batch or 1)
    return contract, max_batch


class TritonRunner(Runner):
    """Runs a ChangeNet model served by Triton (one or more servers) behind the runner interface.

    ``urls``: one URL or several (``grpc://HOST:8001/NAME``, ``http://HOST:8000/NAME``), all
    serving the same model. ``max_batch``: pairs per request (default and cap: the server's
    ``max_batch_size``). ``shared_memory``: ``"auto"`` (system shared memory with a local
    server, falling back to the network), ``True`` (required) or ``False``. ``timeout_s``:
    seconds a request (and each server call) may take. ``slots``: requests in flight (default
    2, at least one per server). ``names``: overrides of the names the model's parameters record.
    Making a runner contacts no server: ``activate`` reads the model's config (its contract and max
    batch, the same on every server) and checks ``max_batch`` against it.
    """

    name = "triton"
    OPTIONS = frozenset({"shared_memory", "timeout_s", "slots"})

    def __init__(
        self,
        urls: Union[str, Sequence[str]],
        names: Optional[ContractNames] = None,
        max_batch: Optional[int] = None,
        *,
        shared_memory: Union[str, bool] = "auto",
        timeout_s: float = DEFAULT_TIMEOUT_S,
        slots: Optional[int] = None,
    ) -> None:
        url_list = [urls] if isinstance(urls, str) else list(urls)
        if not url_list:
            raise InputError("no Triton URL given", expected="grpc://HOST:8001/MODEL or http://HOST:8000/MODEL")
        if shared_memory not in ("auto", True, False):
            raise InputError("shared_memory must be 'auto', True or False", found=repr(shared_memory))
        if not timeout_s or timeout_s <= 0:
            raise InputError("the Triton timeout must be positive seconds", found=timeout_s)
        self.endpoints = [parse_url(u) for u in url_list]
        self.model_path = " ".join(e.url for e in self.endpoints)
        self.timeout_s = float(timeout_s)
        self.shared_memory = shared_memory
        for scheme in sorted({e.scheme for e in self.endpoints}):
            _import(scheme)  # a missing tritonclient is reported now, not on activate
        self.names = ContractNames.of(names)
        super().__init__(None)
        self._asked_batch = check_batch_size(max_batch)
        self._max_batch: Optional[int] = None
        self.num_slots = max(int(slots or 2), len(self.endpoints))
        self.uses_shared_memory = False
        self._control: Dict[Endpoint, _Connection] = {}  # main thread: registration, statistics
        self._slot_connections: List[Optional[_Connection]] = []  # each used on its slot's worker only
        self._workers: List[ForkSafePool] = []
        self._inputs: List[Dict[str, np.ndarray]] = []
        self._outputs: List[Optional[np.ndarray]] = []
        self._regions: List[Any] = []  # (connection, region name, handle) per registered region
        self._requests = SlotFutures(0)  # per slot: two requests may be in flight

    def _read_model(self) -> None:
        """Ask every server for the model's config: one contract and the smallest max batch."""
        contract: Optional[ModelContract] = None
        server_max = 0
        for endpoint in self.endpoints:
            conn = _Connection(endpoint, self.timeout_s)
            try:
                conn.check_ready()
                config = conn.model_config()
            finally:
                conn.close()
            here, here_max = contract_from_config(config, self.names)
            if contract is not None and (here.input_names(), here.input_shape, here.input_dtype, here.output,
                                         here.output_kind) != (contract.input_names(), contract.input_shape,
                                                               contract.input_dtype, contract.output, contract.output_kind):
                raise TritonError("the Triton URLs serve different models",
                                  expected="the same inputs, dtype and output everywhere",
                                  found="{} differs from {}".format(endpoint.url, self.endpoints[0].url))
            contract = here
            server_max = here_max if not server_max else min(server_max, here_max)
        assert contract is not None
        if contract.static_batch is not None:
            server_max = contract.static_batch
        asked = self._asked_batch
        if asked is not None and not 1 <= asked <= server_max:
            raise InputError("batch size outside what the Triton model accepts",
                             expected="1 <= batch <= {} (the model's max_batch_size)".format(server_max), found=asked)
        self._contract, self._max_batch = contract, int(asked or server_max)

    @property
    def batch_range(self) -> Tuple[int, int]:
        if self._max_batch is None:
            raise ChangeNetError("the triton runner reads the model's max batch when it activates: use it as "
                                 "`with runner:` or call activate() first")
        return (1, self._max_batch)

    # -- life cycle -------------------------------------------------------------------------
    def _activate(self) -> None:
        self._read_model()
        try:
            self._control = {e: _Connection(e, self.timeout_s) for e in self.endpoints}
            self._slot_connections = [None] * self.num_slots
            self._workers = [ForkSafePool(max_workers=1, thread_name_prefix="changenet-triton-{}".format(s))
                             for s in range(self.num_slots)]
            want_shm = self.shared_memory is True or (
                self.shared_memory == "auto" and all(e.is_local for e in self.endpoints))
            self.uses_shared_memory = want_shm and self._setup_shared_memory(required=self.shared_memory is True)
            if not self.uses_shared_memory:
                shape = (self.batch_range[1],) + tuple(self.contract.input_shape)
                dtype = np.dtype(self.contract.input_dtype)
                self._inputs = [{n: np.zeros(shape, dtype) for n in self.contract.input_names()}
                                for _ in range(self.num_slots)]
                self._outputs = [None] * self.num_slots
            self._requests = SlotFutures(self.num_slots)
        except BaseException:
            self._deactivate()
            raise

    def _output_row_shape(self) -> Tuple[int, ...]:
        return tuple(int(d) for d in self.contract.output_shape[1:])

    def _setup_shared_memory(self, required: bool) -> bool:
        """One registered system shared-memory region per slot: both inputs, then the output."""
        shm = _shared_memory()
        in_shape = (self.batch_range[1],) + tuple(self.contract.input_shape)
        in_bytes = int(np.prod(in_shape)) * np.dtype(self.contract.input_dtype).itemsize
        out_bytes = int(np.prod((self.batch_range[1],) + self._output_row_shape())) * 4
        tag = "changenet-{}-{}".format(os.getpid(), uuid.uuid4().hex[:8])
        try:
            for slot in range(self.num_slots):
                conn = self._control[self._endpoint(slot)]
                region = "{}-{}".format(tag, slot)
                size = 2 * in_bytes + out_bytes
                handle = shm.create_shared_memory_region(region, "/" + region, size)
                self._regions.append((conn, region, handle))
                conn.call("registering shared memory", "register_system_shared_memory", region, "/" + region, size)
                views = {name: shm.get_contents_as_numpy(handle, np.dtype(self.contract.input_dtype), in_shape,
                                                         offset=i * in_bytes)
                         for i, name in enumerate(self.contract.input_names())}
                self._inputs.append(views)
                self._outputs.append(shm.get_contents_as_numpy(
                    handle, np.float32, (self.batch_range[1],) + self._output_row_shape(), offset=2 * in_bytes))
        except (TritonError, shm.SharedMemoryException) as exc:
            self._release_shared_memory()
            if required:
                raise TritonError("cannot use system shared memory with the Triton server", found=str(exc)) from None
            return False
        return True

    def _release_shared_memory(self) -> None:
        shm = _shared_memory()
        self._inputs = []
        self._outputs = []
        for conn, region, handle in self._regions:
            try:
                conn.client.unregister_system_shared_memory(region)
            except Exception:  # the server may be gone; the segment is still ours to remove
                pass
            shm.destroy_shared_memory_region(handle)
        self._regions = []

    def _endpoint(self, slot: int) -> Endpoint:
        return self.endpoints[slot % len(self.endpoints)]

    def _close_slot(self, slot: int) -> None:
        conn = self._slot_connections[slot]
        self._slot_connections[slot] = None
        if conn is not None:
            conn.close()

    def _deactivate(self) -> None:
        for slot, worker in enumerate(self._workers):
            worker.submit(self._close_slot, slot)  # on the thread that made the client
            worker.shutdown(wait=True)
        self._workers = []
        self._requests = SlotFutures(0)
        if self._regions:
            self._release_shared_memory()
        self._inputs = []
        self._outputs = []
        for conn in self._control.values():
            conn.close()
        self._control = {}

    # -- inference --------------------------------------------------------------------------
    def input_buffers(self, batch: int, slot: int = 0) -> Dict[str, np.ndarray]:
        self._require_active()
        self.check_batch(batch)
        self.check_slot(slot)
        return {name: buf[:batch] for name, buf in self._inputs[slot].items()}

    def _request(self, batch: int, slot: int) -> Tuple[np.ndarray, Timing]:
        conn = self._slot_connections[slot]
        if conn is None:
            conn = self._slot_connections[slot] = _Connection(self._endpoint(slot), self.timeout_s)
        module = conn.module
        wire = NUMPY_TO_WIRE[self.contract.input_dtype]
        run_batch = self.contract.static_batch or batch
        shape = [run_batch] + list(self.contract.input_shape)
        inputs = []
        for i, (name, buf) in enumerate(self._inputs[slot].items()):
            item = module.InferInput(name, shape, wire)
            if self.uses_shared_memory:
                item.set_shared_memory(self._regions[slot][1], buf[:run_batch].nbytes, offset=i * buf.nbytes)
            elif conn.endpoint.scheme == "http":
                item.set_data_from_numpy(buf[:run_batch], binary_data=True)
            else:
                item.set_data_from_numpy(buf[:run_batch])
            inputs.append(item)
        if conn.endpoint.scheme == "http":
            requested = module.InferRequestedOutput(self.contract.output, binary_data=True)
        else:
            requested = module.InferRequestedOutput(self.contract.output)
        row_shape = self._output_row_shape()
        if self.uses_shared_memory:
            out_bytes = int(np.prod((run_batch,) + row_shape)) * 4
            in_bytes = sum(b.nbytes for b in self._inputs[slot].values())
            requested.set_shared_memory(self._regions[slot][1], out_bytes, offset=in_bytes)
        kwargs: Dict[str, Any] = {"model_version": conn.endpoint.version, "outputs": [requested]}
        if conn.endpoint.scheme == "grpc":
            kwargs["client_timeout"] = self.timeout_s
        start = now_ms()
        result = conn.call("inference", "infer", conn.endpoint.model, inputs, **kwargs)
        elapsed = now_ms() - start
        if self.uses_shared_memory:
            out = self._outputs[slot][:run_batch]  # type: ignore[index]
        else:
            out = result.as_numpy(self.contract.output)
            if out is None:
                raise TritonError("the Triton server returned no '{}' output".format(self.contract.output))
        out = np.asarray(out).reshape((run_batch,) + row_shape)
        return out[:batch], Timing(compute_ms=elapsed)

    def submit(self, batch: int, slot: int = 0) -> None:
        """Send rows ``[:batch]`` of ``slot`` as one request (on a worker thread; returns at once)."""
        self._require_active()
        self.check_batch(batch)
        self.check_slot(slot)
        self._requests.submit(self._workers[slot], self._request, batch, slot)

    def fetch(self, slot: int = 0, copy: bool = True) -> np.ndarray:
        self._require_active()
        self.check_slot(slot)
        result, self.last_timing = self._requests.result(slot)
        # a shared-memory output is a view of the slot's region, rewritten by its next request
        return result.copy() if copy and self.uses_shared_memory else result

    def statistics(self) -> List[Dict[str, Any]]:
        """The servers' inference statistics of the model (Triton's JSON), one per endpoint."""
        self._require_active()
        stats = []
        for endpoint in self.endpoints:
            conn = self._control[endpoint]
            kwargs = {"as_json": True} if endpoint.scheme == "grpc" else {}
            stats.append(conn.call("reading statistics", "get_inference_statistics", endpoint.model,
                                   endpoint.version, **kwargs))
        return stats
