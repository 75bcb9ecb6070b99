"""`changenet-trt prepare --precision fp16|int8`: the command line over engine/precision.py.

Each run converts the small reference model on tens of pairs (a few seconds)."""

import hashlib
import os

import numpy as np
import onnx
import pytest

import changenet_trt
from changenet_trt.cli import main
from changenet_trt.data.synth import synthesize
from changenet_trt.engine import precision
from changenet_trt.models.reference import OVERFLOW_NODES
from changenet_trt.tools.demo import make_pairs

PAIRS = ["--proof-pairs", "16"]


def _sha256(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


@pytest.fixture(scope="module")
def overflow16(tmp_path_factory):
    """The planted-overflow reference model with TAO's static batch 16, written by the CLI."""
    path = str(tmp_path_factory.mktemp("overflow") / "overflow16.onnx")
    assert main(["reference-model", path, "--fp16-overflow", "--batch", "16"]) == 0
    return path


@pytest.fixture(scope="module")
def tao_set(tmp_path_factory):
    """A synthetic TAO data set of 24 pairs: one calibration batch of 16, 8 held back."""
    return synthesize(str(tmp_path_factory.mktemp("tao") / "set"), pairs=24, seed=4)


def test_fp16_keeps_the_overflow_chain_float32_with_no_flips(overflow16, tmp_path, capsys):
    out = str(tmp_path / "fp16.onnx")
    capsys.readouterr()
    assert main(["prepare", overflow16, "-o", out, "--precision", "fp16"] + PAIRS) == 0
    text = capsys.readouterr().out
    assert "static batch 16 rewritten to a dynamic batch" in text
    assert "16 synthetic pairs" in text and "no --calib-csv" in text  # says where the proof pairs came from
    assert "flips: 0" in text and "FPR = FP/(FP+TN)" in text and "defect capture" in text
    assert "wrote " + out in text and str(tmp_path / "changenet-prepare") not in text
    held = precision.graph_precision(out)
    assert held["float16"] and not held["qdq"]
    assert {"overflow/square", "overflow/scale_down"} <= set(held["fp32_nodes"])
    assert "overflow/scale_up" not in held["fp32_nodes"]
    made = precision.read_made(out)
    assert made["precision"] == "fp16" and made["origin_sha256"] == _sha256(overflow16)
    contract = changenet_trt.read_contract(out)
    assert contract.dynamic_batch and contract.input_dtype == "float32"
    golden, sample, truth = make_pairs(6, seed=2)
    with changenet_trt.load(out) as half, changenet_trt.load(overflow16) as full:
        got, want = half.predict(golden, sample), full.predict(golden, sample)
    assert list(got.decisions) == list(want.decisions)
    assert np.abs(got.scores - want.scores).max() < 1e-2


def test_fp16_user_list_and_data_set_pairs(overflow16, tao_set, tmp_path, capsys):
    listing = tmp_path / "fp32.txt"
    listing.write_text("# kept float32 by hand\noverflow/scale_up\n")
    out = str(tmp_path / "fp16.onnx")
    assert main(["prepare", overflow16, "-o", out, "--precision", "fp16", "--fp32-layers", "@" + str(listing),
                 "--calib-csv", tao_set.csv_path, "--calib-batches", "1"]) == 0
    text = capsys.readouterr().out
    # the one rule prepare and build share: analyse the first batch, prove on the pairs held back
    assert "pairs: the first 16 of 24 pairs of {}".format(tao_set.csv_path) in text and "synthetic" not in text
    assert "pairs: 8 held back (after the first 16 of 24 pairs of {}".format(tao_set.csv_path) in text
    assert "pairs:   8 (8 held back" in text
    assert "3 (2 flagged by fp16-check, 1 yours)" in text
    assert set(OVERFLOW_NODES) <= set(precision.graph_precision(out)["fp32_nodes"])


def test_int8_on_a_synthetic_tao_set_writes_qdq_that_infer_runs(overflow16, tao_set, tmp_path, capsys):
    out = str(tmp_path / "int8.onnx")
    assert main(["prepare", overflow16, "-o", out, "--precision", "int8", "--calib-csv", tao_set.csv_path,
                 "--calib-batches", "1", "--calib-method", "percentile"]) == 0
    text = capsys.readouterr().out
    assert "calibration: percentile 99.999 on 16 pairs (1 batches, 2 pairs per run)" in text
    assert "pairs: 8 held back (after the first 16 of 24 pairs" in text
    assert "FPR = FP/(FP+TN)" in text and "defect capture" in text and "TP / FP / TN / FN" in text
    model = onnx.load(out)
    onnx.checker.check_model(model, full_check=True)
    assert precision.graph_precision(model) == {"float16": False, "qdq": True, "fp32_nodes": []}
    made = precision.read_made(out)
    assert made["method"] == "percentile" and made["calibration_pairs"] == 16 and made["symmetric"]
    assert made["origin_sha256"] == _sha256(overflow16)
    golden = os.path.join(tao_set.images_dir, "images", "golden", "board_000")
    sample = os.path.join(tao_set.images_dir, "images", "inspect", "board_000")
    name = sorted(os.listdir(golden))[0]
    assert main(["infer", out, "--golden", os.path.join(golden, name), "--sample", os.path.join(sample, name)]) == 0
    assert "1 pair, " in capsys.readouterr().out


def test_int8_compares_on_synthetic_pairs_when_calibration_used_every_pair(overflow16, tmp_path, capsys):
    small = synthesize(str(tmp_path / "set16"), pairs=16, seed=6)
    out = str(tmp_path / "int8.onnx")
    assert main(["prepare", overflow16, "-o", out, "--precision", "int8", "--calib-csv", small.csv_path]
                + PAIRS) == 0
    text = capsys.readouterr().out
    assert "16 synthetic pairs" in text and "was analysed; none held back" in text


def test_int8_leaves_the_fp32_layers_unquantized(tao_like_models, tao_set, tmp_path, capsys):
    """--fp32-layers with int8 (e.g. the worst layers of an INT8 report): the named MatMul gets no
    Q/DQ on its inputs (it runs in float), the other MatMuls still do; the metadata names it."""
    source = tao_like_models["learnable_dynamic"]
    names = [n.name for n in precision.name_nodes(onnx.load(source)).graph.node if n.op_type == "MatMul"]
    kept = names[len(names) // 2]
    out = str(tmp_path / "int8.onnx")
    assert main(["prepare", source, "-o", out, "--precision", "int8", "--calib-csv", tao_set.csv_path,
                 "--calib-batches", "1", "--fp32-layers", kept]) == 0
    assert kept in capsys.readouterr().out
    model = onnx.load(out)
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    matmuls = {n.name: n for n in model.graph.node if n.op_type == "MatMul"}
    assert not any(producers.get(i) == "DequantizeLinear" for i in matmuls[kept].input)
    assert all(any(producers.get(i) == "DequantizeLinear" for i in n.input) for n in matmuls.values() if n.name != kept)
    assert kept in precision.read_made(out)["float_nodes"]


@pytest.mark.parametrize("precision_name", ["fp16", "int8"])
def test_uint8_input_chains_after_the_precision(precision_name, overflow16, tao_set, tmp_path, capsys):
    """dynamic -> float16/INT8 (proven on float pairs) -> uint8 front (proven equal to host
    normalisation on the typed model): the written model takes pixels and keeps the typed graph."""
    out = str(tmp_path / "u8.onnx")
    extra = ["--calib-csv", tao_set.csv_path, "--calib-batches", "1"] if precision_name == "int8" else PAIRS
    assert main(["prepare", overflow16, "-o", out, "--precision", precision_name, "--uint8-input",
                 "--normalization", "tao"] + extra) == 0
    text = capsys.readouterr().out
    assert "inputs are now uint8 RGB pixels" in text and "changenet-prepare" not in text
    contract = changenet_trt.read_contract(out)
    assert contract.input_dtype == "uint8" and contract.dynamic_batch
    precision.check_typed(onnx.load(out), "uint8 model")
    held = precision.graph_precision(out)
    assert held["float16"] == (precision_name == "fp16") and held["qdq"] == (precision_name == "int8")
    assert precision.read_made(out)["precision"] == precision_name
    golden, sample, _ = make_pairs(4, seed=3)
    with changenet_trt.load(out) as typed, changenet_trt.load(overflow16) as full:
        got, want = typed.predict(golden, sample), full.predict(golden, sample)
    assert list(got.decisions) == list(want.decisions)


# -- refused before any work: one error line, exit 2, nothing written -------------------------------
BAD = {
    "int8 without data": (["--precision", "int8"], "--calib-csv"),
    "fp32 layers without precision": (["--fp32-layers", "overflow/*"], "--precision fp16 or int8"),
    "int8 layer pattern matching nothing": (["--precision", "int8", "--calib-csv", "CSV", "--fp32-layers",
                                             "nothing*"], "'nothing*'"),
    "pattern matching nothing": (["--precision", "fp16", "--fp32-layers", "overflow/*", "nothing*"], "'nothing*'"),
    "missing layer list": (["--precision", "fp16", "--fp32-layers", "@NOFILE"], "cannot read the layer list"),
    "force without fp16": (["--force"], "--precision fp16"),
    "calibration batches without data": (["--precision", "fp16", "--calib-batches", "2"], "--calib-csv"),
    "calibration method with fp16": (["--precision", "fp16", "--calib-csv", "CSV", "--calib-method", "entropy"],
                                     "--precision int8"),
    "data set without precision": (["--calib-csv", "CSV"], "--precision"),
    "too few pairs for a batch": (["--precision", "int8", "--calib-csv", "SMALL"], "calibration batch"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_combinations_are_refused_before_work(case, overflow16, tao_set, tmp_path, capsys, monkeypatch):
    import changenet_trt.engine.prepare as prepare

    argv, fragment = BAD[case]
    small = synthesize(str(tmp_path / "small"), pairs=4, seed=1).csv_path if "SMALL" in argv else None
    argv = [{"CSV": tao_set.csv_path, "SMALL": small, "@NOFILE": "@" + str(tmp_path / "none.txt")}.get(a, a)
            for a in argv]
    started = []
    monkeypatch.setattr(prepare, "prepare_model", lambda *a, **kw: started.append(a))
    out = tmp_path / "out.onnx"
    capsys.readouterr()
    assert main(["prepare", overflow16, "-o", str(out)] + argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines
    assert not started and not out.exists() and captured.out == ""
