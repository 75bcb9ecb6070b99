import csv
import json
import os
import subprocess
import sys

import pytest

from changenet_trt.cli import main
from changenet_trt.tools.demo import make_pairs


def run_cli(*args):
    """Run the real console entry point in a subprocess (exit code, stdout, stderr)."""
    proc = subprocess.run(
        [sys.executable, "-m", "changenet_trt.cli"] + list(args), capture_output=True, text=True, timeout=120
    )
    return proc.returncode, proc.stdout, proc.stderr


def test_inspect_static16_learnable_json(reference_models, capsys):
    assert main(["inspect", reference_models["learnable_static16"], "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["sample_input"] == "input_1" and info["golden_input"] == "input_2"
    assert info["output"] == "output" and info["output_kind"] == "learnable"
    assert info["static_batch"] == 16 and info["input_shape"] == [3, 512, 128] and info["opset"] == 17


def test_inspect_dynamic_euclidean_text(reference_models, capsys):
    assert main(["inspect", reference_models["euclidean_dynamic"]]) == 0
    out = capsys.readouterr().out
    assert "batch:         dynamic" in out and "euclidean" in out and "input_1" in out


def test_inspect_with_overrides(tmp_path, capsys):
    from changenet_trt.models.reference import write_reference_model

    path = write_reference_model(str(tmp_path / "renamed.onnx"), sample_input="test", golden_input="ref", output="logits")
    assert main(["inspect", path]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "'test'" in err and len(err.strip().splitlines()) == 1
    assert main(["inspect", path, "--json", "--sample-input", "test", "--golden-input", "ref", "--output", "logits"]) == 0
    assert json.loads(capsys.readouterr().out)["output"] == "logits"


def test_infer_writes_csv(reference_models, tmp_path, capsys):
    import cv2

    golden, sample, truth = make_pairs(4, seed=5)
    gp, sp = [], []
    for i in range(4):
        gp.append(str(tmp_path / "g{}.png".format(i)))
        sp.append(str(tmp_path / "s{}.png".format(i)))
        cv2.imwrite(gp[-1], golden[i][:, :, ::-1])
        cv2.imwrite(sp[-1], sample[i][:, :, ::-1])
    out_csv = str(tmp_path / "scores.csv")
    code = main(["infer", reference_models["learnable_dynamic"], "--golden"] + gp + ["--sample"] + sp + ["--out", out_csv])
    assert code == 0
    stdout = capsys.readouterr().out
    assert "4 pairs, 2 defects" in stdout
    with open(out_csv) as handle:
        rows = list(csv.DictReader(handle))
    assert [r["defect"] for r in rows] == ["1" if t else "0" for t in truth]
    assert rows[0]["golden"] == gp[0] and float(rows[1]["score"]) > 0.5


@pytest.mark.parametrize(
    "args, fragment, code",
    [
        (["inspect", "/nonexistent/model.onnx"], "model file not found", 2),
        (["infer", "MODEL", "--golden", "a.png", "b.png", "--sample", "a.png"], "same number of images", 2),
        (["infer", "MODEL", "--golden", "/nope/a.png", "--sample", "/nope/b.png"], "image file not found: /nope/a.png", 2),
        (["inspect", "NOTONNX"], "cannot read", 2),
    ],
)
def test_user_errors_print_one_line_without_traceback(reference_models, tmp_path, args, fragment, code):
    notonnx = tmp_path / "bad.onnx"
    notonnx.write_text("hello")
    args = [reference_models["learnable_dynamic"] if a == "MODEL" else str(notonnx) if a == "NOTONNX" else a for a in args]
    rc, out, err = run_cli(*args)
    assert rc == code, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err


def test_help_lists_every_command():
    rc, out, err = run_cli("--help")
    assert rc == 0
    for command in ("inspect", "infer", "reference-model", "demo"):
        assert command in out
    rc, out, _ = run_cli("infer", "--help")
    assert rc == 0 and "--golden" in out and "--cutoff" in out


def test_no_command_prints_help_and_fails():
    rc, out, _ = run_cli()
    assert rc == 2 and "usage:" in out


def test_argparse_errors_exit_2():
    rc, _, err = run_cli("reference-model", "x.onnx", "--batch", "0")
    assert rc == 2 and "positive integer" in err


def test_reference_model_command(tmp_path, capsys):
    out = str(tmp_path / "m.onnx")
    assert main(["reference-model", out, "--kind", "euclidean", "--batch", "16", "--opset", "12"]) == 0
    assert os.path.getsize(out) < 100_000
    from changenet_trt.contract import read_contract

    c = read_contract(out)
    assert (c.output_kind, c.static_batch, c.opset) == ("euclidean", 16, 12)


def test_reference_model_with_planted_fp16_overflow(tmp_path, capsys):
    out = str(tmp_path / "overflow.onnx")
    assert main(["reference-model", out, "--fp16-overflow"]) == 0
    assert "planted float16 overflow" in capsys.readouterr().out
    import onnx

    assert any(node.name.startswith("overflow/") for node in onnx.load(out).graph.node)
    assert main(["reference-model", out, "--realistic", "--fp16-overflow"]) == 2
