"""Pairs to run a model on, as one value: a :class:`PairSource` fills normalised
``(golden, sample)`` batches on demand, from a TAO data set (:func:`dataset_source`) or from
synthetic PCB pairs rendered in memory (:func:`synthetic_source`). ``validate``, ``fp16-check``,
the typed-model proof and INT8 calibration all read their pairs through it.
"""

from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Sequence

import numpy as np

from changenet_trt.data.dataset import LightLayout, PairLoader, load_dataset
from changenet_trt.data.preprocess import get_normalization, prepare_tiles, shared_pool, wait_all
from changenet_trt.data.synth import plan_rows, render_pair
from changenet_trt.errors import InputError

#: ``fill(golden, sample, lo, hi)``: writes pairs ``[lo, hi)`` as normalised float32 ``[hi-lo, C, H, W]``
FillFn = Callable[[np.ndarray, np.ndarray, int, int], None]
#: ``make_source(contract, normalization) -> PairSource``: pairs for a model's input shape and normalisation
SourceFactory = Callable[[Any, Any], "PairSource"]


@dataclass
class PairSource:
    """Pairs to validate on: ``fill(golden, sample, lo, hi)`` writes pairs ``[lo, hi)`` as
    normalised float ``[hi-lo, C, H, W]``; ``labels`` bool ``[count]`` (True = defect) or
    ``None``; ``failed()`` gives the indexes whose files could not be decoded (dropped from the
    comparison); ``close()`` frees what the source holds."""

    count: int
    fill: FillFn
    description: str
    labels: Optional[np.ndarray] = None
    ids: List[str] = field(default_factory=list)
    failed: Callable[[], Sequence[int]] = lambda: ()
    close: Callable[[], None] = lambda: None

    def head(self, count: int) -> "PairSource":
        """The first ``count`` pairs (the analysis pairs of a typed model)."""
        count = min(count, self.count)
        return PairSource(
            count=count, fill=self.fill, description="the first {} of {}".format(count, self.description),
            labels=None if self.labels is None else self.labels[:count], ids=list(self.ids[:count]),
            failed=lambda: [i for i in self.failed() if i < count], close=self.close)

    def held_back(self, skip: int) -> "PairSource":
        """The pairs after the first ``skip``: those an analysis of the first ``skip`` did not see."""

        def fill(golden: np.ndarray, sample: np.ndarray, lo: int, hi: int) -> None:
            self.fill(golden, sample, lo + skip, hi + skip)

        return PairSource(
            count=self.count - skip, fill=fill,
            description="{} held back (after the first {} of {})".format(self.count - skip, skip, self.description),
            labels=None if self.labels is None else self.labels[skip:], ids=list(self.ids[skip:]),
            failed=lambda: [i - skip for i in self.failed() if i >= skip], close=self.close)


def synthetic_source(
    pairs: int,
    input_shape: Sequence[int],
    normalization: Any = None,
    seed: int = 0,
    defect_rate: float = 0.3,
    layout: Any = None,
) -> PairSource:
    """``pairs`` synthetic PCB pairs (:mod:`changenet_trt.data.synth`, rendered in memory, not
    written to disk) with their labels, assembled per light layout (TAO's 4 lights stacked
    along H by default) and normalised. Deterministic by ``seed``."""
    if pairs < 1:
        raise InputError("--pairs must be positive", found=pairs)
    layout = layout or LightLayout()
    lights = list(layout.lights) or ["UniformLight"]
    boxes = layout.boxes(int(input_shape[1]), int(input_shape[2]))
    norm = get_normalization(normalization)
    rows = plan_rows(pairs, defect_rate, seed)

    def one(index: int, golden_dst: np.ndarray, sample_dst: np.ndarray) -> None:
        golden, sample = render_pair(rows[index], seed, lights)
        prepare_tiles(golden, golden_dst, boxes, norm)
        prepare_tiles(sample, sample_dst, boxes, norm)

    def fill(golden_dst: np.ndarray, sample_dst: np.ndarray, lo: int, hi: int) -> None:
        pool = shared_pool()
        wait_all([pool.submit(one, i, golden_dst[i - lo], sample_dst[i - lo]) for i in range(lo, hi)])

    return PairSource(
        count=pairs,
        fill=fill,
        description="{} synthetic pairs, seed {}, {} defects".format(
            pairs, seed, sum(1 for r in rows if r.label != "PASS")),
        labels=np.array([r.label != "PASS" for r in rows], dtype=bool),
        ids=["board_{:03d}/{} {}".format(r.board, r.object_name, r.label) for r in rows],
    )


def dataset_source(
    csv_path: str,
    images_dir: Optional[str],
    input_shape: Sequence[int],
    normalization: Any = None,
    layout: Any = None,
    strict: bool = False,
    on_problem: Optional[Callable[[Any], None]] = None,
) -> PairSource:
    """The pairs of a TAO data set (:func:`changenet_trt.data.dataset.load_dataset`) with their
    labels; rows with missing files are set aside (or stop the run with ``strict``), pairs that
    fail to decode are dropped from the comparison."""
    layout = layout or LightLayout()
    data = load_dataset(csv_path, images_dir, layout=layout, strict=strict, on_problem=on_problem)
    loader = PairLoader(data.pairs, layout, tuple(input_shape), normalization, strict=strict, on_problem=on_problem)
    skipped = "" if not data.problems else ", {} row{} set aside".format(len(data.problems), "" if len(data.problems) == 1 else "s")
    return PairSource(
        count=len(data),
        fill=loader.fill,
        description="{} pairs of {}{}".format(len(data), csv_path, skipped),
        labels=data.is_defect,
        ids=["line {} {}".format(p.line, p.object_name) for p in data.pairs],
        failed=lambda: sorted(loader.failed),
        close=loader.close,
    )
