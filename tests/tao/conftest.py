"""The `tao` tier: this package's commands on what TAO 7.3.0's own export code writes.

`make test-tao` exports the models (`make tao-models`: TAO's code in its own venv, see
export_tao.py) and runs this folder with CHANGENET_TAO_MODELS set to their folder. Without it
(plain `make test`) every test here is skipped with the reason, so the fast suite stays fast.
Commands that hold memory run in a child process under an address-space cap, so a regression
that holds every intermediate tensor fails its test instead of taking the machine down.
"""

import json
import os

import pytest

MODELS_ENV = "CHANGENET_TAO_MODELS"

@pytest.fixture(scope="session")
def tao_manifest():
    """manifest.json of the exports (name -> entry, with the entry's "path" added)."""
    folder = os.environ.get(MODELS_ENV)
    if not folder:
        pytest.skip("TAO's exports are not here: set {} to the folder `make tao-models` writes "
                    "(`make test-tao` does both)".format(MODELS_ENV))
    path = os.path.join(folder, "manifest.json")
    if not os.path.exists(path):
        pytest.skip("{} has no manifest.json: run `make tao-models`".format(folder))
    with open(path) as f:
        manifest = json.load(f)
    for entry in manifest.values():
        entry["path"] = os.path.join(folder, entry["file"])
    return manifest


@pytest.fixture(scope="session")
def tao_model(tao_manifest):
    """tao_model(name) -> path of one export; skips with the reason when it is missing."""

    def get(name):
        entry = tao_manifest.get(name)
        if entry is None or not os.path.exists(entry["path"]):
            pytest.skip("TAO export {!r} missing: run `make tao-models`".format(name))
        return entry["path"]

    return get


@pytest.fixture(scope="session")
def synth_set(tmp_path_factory):
    """synth_set(pairs) -> CSV of a small synthetic TAO data set (4 lights, TAO's layout), made once."""
    from changenet_trt.data.synth import synthesize

    made = {}

    def get(pairs):
        if pairs not in made:
            out = tmp_path_factory.mktemp("synth{}".format(pairs))
            made[pairs] = synthesize(str(out), pairs=pairs, defect_rate=0.3, seed=11, workers=2).csv_path
        return made[pairs]

    return get
