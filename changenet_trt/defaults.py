"""One home for the defaults every command shares.

TAO's shipped specs export a static batch of 16 and the NGC card measures at batch 16, so 16
is the batch everything runs at unless told otherwise; engines are built for batches 1..32
with 16 as the optimisation point, so one engine serves single pairs, the usual batch and a
double batch.
"""

BATCH_SIZE = 16
"""Pairs per batch for predict, eval, bench and the runners."""

ENGINE_PROFILE = (1, 16, 32)
"""(min, opt, max) batch of the optimisation profile ``build`` makes by default."""

ENGINES_DIR = "engines"
"""Where ``build`` writes engines when no output path is given."""

CALIBRATION_DIR = "calibration"
"""Where INT8 calibration caches go when no path is given."""
