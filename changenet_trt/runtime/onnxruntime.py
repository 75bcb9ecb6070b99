"""ONNX Runtime backend: the CPU default, and the reference the TensorRT runner is checked against."""

import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnxruntime as ort

from changenet_trt.contract import ContractNames, read_contract
from changenet_trt.defaults import BATCH_SIZE
from changenet_trt.errors import InputError
from changenet_trt.runtime.base import (
    Runner,
    SlotFutures,
    Timing,
    check_batch_size,
    check_buffer_memory,
    now_ms,
)
from changenet_trt.threads import ForkSafePool

PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def resolve_providers(providers: Optional[Sequence[str]]) -> List[str]:
    """Map short names (cpu, cuda, tensorrt) to ONNX Runtime providers and check they exist.

    CPU is always appended last as the fallback ONNX Runtime expects.
    """
    wanted = [PROVIDER_ALIASES.get(p.lower(), p) for p in (providers or ["cpu"])]
    available = ort.get_available_providers()
    missing = [p for p in wanted if p not in available]
    if missing:
        raise InputError(
            "ONNX Runtime execution provider not available in this install: {}".format(", ".join(missing)),
            expected="one of {}".format(", ".join(available)),
            found=", ".join(wanted),
        )
    if "CPUExecutionProvider" not in wanted:
        wanted.append("CPUExecutionProvider")
    return wanted


class OnnxRuntimeRunner(Runner):
    """Runs a ChangeNet ONNX model with ONNX Runtime.

    Input buffers are preallocated C-contiguous arrays ``[max_batch, C, H, W]`` per slot; a
    batch feeds the first-rows view of them, which ONNX Runtime reads in place (no copy). A
    static-batch model always runs at its own batch: rows past ``batch`` are padding whose
    outputs are dropped.
    """

    name = "onnxruntime"

    OPTIONS = frozenset({"providers", "threads"})

    def __init__(
        self,
        model_path: str,
        names: Optional[ContractNames] = None,
        max_batch: Optional[int] = None,
        *,
        providers: Optional[Sequence[str]] = None,
        threads: Optional[int] = None,
    ) -> None:
        self.model_path = os.fspath(model_path)
        super().__init__(read_contract(self.model_path, names))
        static = self.contract.static_batch
        max_batch = check_batch_size(max_batch)
        if static is not None:
            if max_batch is not None and max_batch != static:
                raise InputError(
                    "this model has a static batch; run it at that batch or prepare a dynamic-batch copy",
                    expected="max_batch {}".format(static),
                    found=max_batch,
                )
            self._max_batch = static
        else:
            self._max_batch = int(max_batch or BATCH_SIZE)
        per_pair = int(np.prod(self.contract.input_shape)) * np.dtype(self.contract.input_dtype).itemsize
        check_buffer_memory(2 * self.num_slots * self._max_batch * per_pair, self._max_batch, "input")
        self.providers = providers
        self.threads = threads
        self._session = None
        self._inputs: List[Dict[str, np.ndarray]] = []
        self._requests = SlotFutures(0)
        self._worker: Optional[ForkSafePool] = None

    @property
    def batch_range(self) -> Tuple[int, int]:
        return (1, self._max_batch)

    def _activate(self) -> None:
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: ORT's warnings are noise for users
        if self.threads:
            options.intra_op_num_threads = int(self.threads)
            options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            self.model_path, sess_options=options, providers=resolve_providers(self.providers)
        )
        shape = (self._max_batch,) + tuple(self.contract.input_shape)
        dtype = np.dtype(self.contract.input_dtype)
        self._inputs = [
            {name: np.zeros(shape, dtype=dtype) for name in self.contract.input_names()}
            for _ in range(self.num_slots)
        ]
        self._requests = SlotFutures(self.num_slots)
        self._worker = ForkSafePool(max_workers=1, thread_name_prefix="changenet-ort")

    def _deactivate(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=True)
        self._worker = None
        self._session = None
        self._inputs = []
        self._requests = SlotFutures(0)

    def input_buffers(self, batch: int, slot: int = 0) -> Dict[str, np.ndarray]:
        self._require_active()
        self.check_batch(batch)
        self.check_slot(slot)
        return {name: buf[:batch] for name, buf in self._inputs[slot].items()}

    def _run(self, batch: int, slot: int) -> "Tuple[np.ndarray, Timing]":
        run_batch = self.contract.static_batch or batch
        feed = {name: buf[:run_batch] for name, buf in self._inputs[slot].items()}
        start = now_ms()
        raw = self._session.run([self.contract.output], feed)[0]  # type: ignore[union-attr]
        elapsed = now_ms() - start
        return raw[:batch], Timing(enqueue_ms=0.0, compute_ms=elapsed)

    def run_direct(self, feed: Dict[str, np.ndarray]) -> Optional[np.ndarray]:
        """Run the caller's arrays with no copy when they fit: the model's dtype, C-contiguous, a
        batch within ``max_batch`` that needs no padding. ONNX Runtime sessions accept
        concurrent ``run`` calls, so threads calling this run at the same time."""
        self._require_active()
        arrays = [feed[name] for name in self.contract.input_names()]
        batch = arrays[0].shape[0]
        static = self.contract.static_batch
        if (static is not None and batch != static) or not 1 <= batch <= self._max_batch:
            return None
        dtype = np.dtype(self.contract.input_dtype)
        if any(a.dtype != dtype or not a.flags.c_contiguous or a.shape[0] != batch for a in arrays):
            return None
        start = now_ms()
        raw = self._session.run([self.contract.output], feed)[0]  # type: ignore[union-attr]
        self.last_timing = Timing(enqueue_ms=0.0, compute_ms=now_ms() - start)
        return raw

    def submit(self, batch: int, slot: int = 0) -> None:
        """Queue the batch on the runner's worker thread (ONNX Runtime releases the GIL while
        it runs, so the caller can prepare the next batch meanwhile)."""
        self._require_active()
        self.check_batch(batch)
        self.check_slot(slot)
        self._requests.submit(self._worker, self._run, batch, slot)  # type: ignore[arg-type]

    def fetch(self, slot: int = 0, copy: bool = True) -> np.ndarray:
        self._require_active()
        self.check_slot(slot)
        result, self.last_timing = self._requests.result(slot)
        # ORT returns a fresh array per run; the first-rows slice of it is only a view when a
        # static-batch model padded the batch.
        return result.copy() if copy and result.base is not None else result
