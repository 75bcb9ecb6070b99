"""Synthetic PCB data: deterministic, in TAO's layout, and separated by the reference models."""

import filecmp
import io
import json
import os
import sys

import numpy as np
import pytest

from changenet_trt.data import synth
from changenet_trt.data.dataset import TAO_LIGHTS, LightLayout, load_dataset
from changenet_trt.errors import InputError
from changenet_trt.tools.demo import make_pairs


def _tree(root):
    out = []
    for folder, _, files in os.walk(root):
        out += [os.path.relpath(os.path.join(folder, f), root) for f in files]
    return sorted(out)


def test_same_seed_same_bytes_whatever_the_threads(tmp_path):
    a = synth.synthesize(str(tmp_path / "a"), pairs=30, defect_rate=0.4, seed=3, workers=2)
    b = synth.synthesize(str(tmp_path / "b"), pairs=30, defect_rate=0.4, seed=3, workers=1)
    files = _tree(a.out_dir)
    assert files == _tree(b.out_dir)
    assert len(files) == 30 * 2 * 4 + 2  # 4 lights x golden/sample per pair, CSV, synth.json
    match, mismatch, errors = filecmp.cmpfiles(a.out_dir, b.out_dir, files, shallow=False)
    assert mismatch == [] and errors == []
    c = synth.synthesize(str(tmp_path / "c"), pairs=30, defect_rate=0.4, seed=4)
    with open(a.csv_path) as fa, open(c.csv_path) as fc:
        assert fa.read() != fc.read()
    first = "images/golden/board_000/{}_UniformLight.jpg".format(a.rows[0].object_name)
    if os.path.exists(os.path.join(c.out_dir, first)):
        assert not filecmp.cmp(os.path.join(a.out_dir, first), os.path.join(c.out_dir, first), shallow=False)


def test_plan_has_the_exact_defect_count_and_valid_types():
    rows = synth.plan_rows(200, 0.25, seed=9)
    assert sum(r.label != "PASS" for r in rows) == 50
    assert {r.label for r in rows} - {"PASS"} <= set(synth.DEFECT_TYPES)
    for row in rows:
        assert row.label == "PASS" or row.label in synth.VALID_DEFECTS[row.component]
    names = [(r.board, r.object_name) for r in rows]
    assert len(set(names)) == len(names)
    assert rows == synth.plan_rows(200, 0.25, seed=9)
    assert sum(r.label != "PASS" for r in synth.plan_rows(10, 0.0, seed=1)) == 0
    assert all(r.label != "PASS" for r in synth.plan_rows(10, 1.0, seed=1))


def test_output_is_a_tao_data_set(tmp_path):
    result = synth.synthesize(str(tmp_path), pairs=12, defect_rate=0.5, seed=1)
    data = load_dataset(result.csv_path)  # TAO's defaults: 4 lights, .jpg, images under the CSV's folder
    assert len(data) == 12 and data.problems == []
    assert data.is_defect.sum() == 6
    assert data.pairs[0].sample_files[0].endswith("_{}.jpg".format(TAO_LIGHTS[0]))
    with open(os.path.join(str(tmp_path), "synth.json")) as handle:
        meta = json.load(handle)
    assert meta["seed"] == 1 and sum(meta["counts"].values()) == 12
    assert result.counts == meta["counts"]


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_only_when_asked_and_on_a_terminal(tmp_path, monkeypatch):
    done = []
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    synth.synthesize(str(tmp_path / "a"), pairs=40, seed=1, progress=True, on_pair=done.append)
    assert done == [32, 40]
    assert "\r" in terminal.getvalue() and "synth" in terminal.getvalue() and "40/40" in terminal.getvalue()
    quiet = Terminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    synth.synthesize(str(tmp_path / "b"), pairs=5, seed=1)  # progress defaults to off (library use)
    assert quiet.getvalue() == ""
    log_file = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log_file)
    synth.synthesize(str(tmp_path / "c"), pairs=5, seed=1, progress=True)  # not a terminal: silent
    assert log_file.getvalue() == ""


def test_single_image_png_variant(tmp_path):
    result = synth.synthesize(str(tmp_path), pairs=4, seed=2, lights=(), ext="png", size=64)
    data = load_dataset(result.csv_path, layout=LightLayout(lights=(), ext=".png"))
    assert len(data) == 4
    import cv2

    assert cv2.imread(data.pairs[0].sample_files[0]).shape == (64, 64, 3)


def test_pass_samples_differ_only_by_nuisance():
    golden, sample = synth.render_pair(synth.Plan(0, 0, "R001", "resistor", "PASS"), seed=5)
    assert len(golden) == 4 and golden[0].shape == (128, 128, 3) and golden[0].dtype == np.uint8
    diff = [np.abs(g.astype(int) - s.astype(int)).mean() for g, s in zip(golden, sample)]
    assert all(0 < d < 8 for d in diff)
    _, missing = synth.render_pair(synth.Plan(0, 0, "R001", "resistor", "MISSING"), seed=5)
    assert np.abs(golden[2].astype(int) - missing[2].astype(int)).mean() > max(diff)


def test_bad_arguments(tmp_path):
    with pytest.raises(InputError):
        synth.synthesize(str(tmp_path), pairs=0)
    with pytest.raises(InputError):
        synth.synthesize(str(tmp_path), pairs=2, defect_rate=1.5)
    with pytest.raises(InputError):
        synth.synthesize(str(tmp_path), pairs=2, ext=".gif")
    with pytest.raises(InputError):
        synth.render_pair(synth.Plan(0, 0, "U1", "ic", "MELTED"), seed=0)


def test_make_pairs_for_quick_checks():
    golden, sample, truth = make_pairs(6, seed=3)
    assert len(golden) == len(sample) == 6
    assert golden[0].shape == (512, 128, 3) and golden[0].dtype == np.uint8
    assert truth.tolist() == [False, True] * 3
    again, _, _ = make_pairs(6, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(golden, again))


@pytest.fixture(scope="module")
def separation_set(tmp_path_factory):
    return synth.synthesize(str(tmp_path_factory.mktemp("separation")), pairs=240, defect_rate=0.3, seed=11)


@pytest.mark.parametrize("kind", ["learnable", "euclidean"])
def test_reference_models_separate_the_synthetic_pairs(separation_set, reference_models, kind):
    """At the model's recommended cutoff: few false alarms on PASS pairs, nearly every defect found."""
    from changenet_trt.evaluation.evaluate import evaluate

    result = evaluate(reference_models["{}_dynamic".format(kind)], separation_set.csv_path, out_dir=None, progress=False)
    summary = result.summary
    assert summary["pairs"] == 240 and summary["defect_pairs"] == 72
    assert summary["fpr"] <= 0.02
    assert summary["defect_capture"] >= 0.95
    assert summary["auc"] >= 0.99
