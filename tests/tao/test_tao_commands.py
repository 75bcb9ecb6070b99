"""changenet-trt's commands on TAO 7.3.0's own exports (few pairs each: FAN-hybrid-small runs about
two pairs a second on two cores). Heavy commands run in a child process under an address-space
cap (tao_helpers.run_cli) and report their peak resident memory."""

import json
import os
import re

import numpy as np
import onnx
import pytest

from changenet_trt.cli import main

from tao_helpers import random_pairs, run_cli, run_onnx

pytestmark = pytest.mark.tao

GB = 1 << 30
# The bound on every step's peak memory on these models.
PEAK_RSS_LIMIT = 8 * GB


def _inputs_batch(path):
    graph = onnx.load(path, load_external_data=False).graph
    dims = [v.type.tensor_type.shape.dim[0] for v in list(graph.input) + list(graph.output)]
    return {d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims}


# -- inspect ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,kind,batch", [
    ("learnable_b16", "learnable", 16), ("learnable_dynamic", "learnable", None),
    ("euclidean_b16", "euclidean", 16), ("euclidean_dynamic", "euclidean", None),
    ("learnable_opset12_b16", "learnable", 16)])
def test_inspect_reads_taos_contract(tao_model, capsys, name, kind, batch):
    assert main(["inspect", tao_model(name), "--json"]) == 0
    seen = json.loads(capsys.readouterr().out)
    assert (seen["sample_input"], seen["golden_input"], seen["output"]) == ("input_1", "input_2", "output")
    assert seen["output_kind"] == kind and seen["input_shape"] == [3, 512, 128]
    assert seen["static_batch"] == batch and seen["dynamic_batch"] == (batch is None)
    assert seen["opset"] == (12 if "opset12" in name else 17)


# -- prepare: static 16 -> dynamic -----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["learnable_b16", "euclidean_b16", "learnable_opset12_b16"])
def test_prepare_makes_taos_static_export_dynamic(tao_model, tmp_path, name):
    """prepare proves the rewrite itself (batch 16 against the original, then 1 and 17 rows); the
    test proves it again independently: the static and dynamic exports share their seeded weights,
    so the prepared model at batch 2 must give the dynamic export's rows."""
    out = tmp_path / "dynamic.onnx"
    run = run_cli(["prepare", tao_model(name), "-o", out, "--proof-batches", "1,17"], tmp_path)
    assert run.returncode == 0, run
    assert run.peak_rss < PEAK_RSS_LIMIT, run
    assert all(isinstance(d, str) and d for d in _inputs_batch(str(out))), _inputs_batch(str(out))
    onnx.checker.check_model(str(out))
    reference = tao_model(name.replace("_opset12", "").replace("_b16", "_dynamic"))
    sample, golden = random_pairs(2, seed=3)
    np.testing.assert_allclose(run_onnx(str(out), sample, golden), run_onnx(reference, sample, golden),
                               rtol=1e-4, atol=1e-5)


# -- eval on a synthetic data set --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["learnable_dynamic", "euclidean_b16"])
def test_eval_scores_every_pair(tao_model, tmp_path, synth_set, name):
    out = tmp_path / "eval"
    run = run_cli(["eval", tao_model(name), "--csv", synth_set(8), "--out", out, "--no-plots", "--quiet"], tmp_path)
    assert run.returncode == 0, run
    summary = json.loads((out / "summary.json").read_text())
    text = json.dumps(summary)
    assert re.search(r'"pairs": 8\b', text) or re.search(r'"scored": 8\b', text), summary
    with open(out / "scores.csv") as f:
        assert len(f.read().strip().splitlines()) == 1 + 8


# -- triton-repo ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["learnable_b16", "euclidean_dynamic"])
def test_triton_repo_from_taos_export(tao_model, tmp_path, name):
    repo = tmp_path / "repo"
    run = run_cli(["triton-repo", tao_model(name), "-o", repo, "--platform", "onnxruntime_onnx"], tmp_path)
    assert run.returncode == 0, run
    config = (repo / "changenet" / "config.pbtxt").read_text()
    assert "max_batch_size: 16" in config and '"input_1"' in config and '"input_2"' in config
    model = next((repo / "changenet" / "1").glob("*.onnx"))
    assert all(isinstance(d, str) and d for d in _inputs_batch(str(model))), _inputs_batch(str(model))


# -- build --dry-run per TensorRT version (no TensorRT: the test double's 'not installed') -------------------
@pytest.mark.parametrize("version,texts", [
    ("8.5.2", ["weakly typed (TensorRT 8.x)", "builder flags:  FP16"]),
    ("10.3.0", ["strongly typed; precision from the typed model"]),
    ("11.4.0", ["strongly typed; precision from the typed model", "builder flags:  (none)"])])
def test_build_dry_run_on_taos_static_export(no_tensorrt, tao_model, workdir, capsys, monkeypatch, version, texts):
    """A dry run prints the plan for TAO's default export and claims no proof it did not run."""
    import onnxruntime

    sessions = []
    real = onnxruntime.InferenceSession

    def counted(*args, **kwargs):
        sessions.append(args[:1])
        return real(*args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", counted)
    assert main(["build", tao_model("learnable_b16"), "--dry-run", "--trt-version", version]) == 0
    out = capsys.readouterr().out
    assert "static batch 16 -> dynamic" in out
    for text in texts:
        assert text in out, (version, text)
    if re.search(r"\bproven\b", out):
        assert sessions, "the dry run says 'proven' but ran no proof:\n" + out
    assert not os.path.exists("engines")
