"""Data loader for ``polygraphy run --data-loader-script``: the benchmark's own inputs.

bench_runners.py sets CHANGENET_BENCH_MODEL, CHANGENET_BENCH_BATCH, CHANGENET_BENCH_COUNT and
CHANGENET_BENCH_SEED; ``load_data`` then yields the same seeded arrays that
``changenet-trt bench`` and the raw onnxruntime loop feed (changenet_trt.tools.bench.random_inputs),
COUNT times (one feed per timed polygraphy iteration).
"""

import os


def load_data():
    from changenet_trt.contract import read_contract
    from changenet_trt.tools.bench import random_inputs

    contract = read_contract(os.environ["CHANGENET_BENCH_MODEL"])
    feed = random_inputs(contract, int(os.environ["CHANGENET_BENCH_BATCH"]), int(os.environ.get("CHANGENET_BENCH_SEED", "0")))
    for _ in range(int(os.environ["CHANGENET_BENCH_COUNT"])):
        yield feed
