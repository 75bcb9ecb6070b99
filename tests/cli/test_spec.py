"""``--spec``: TAO's experiment spec as the defaults of a command's flags."""

import csv
import json
import os

import onnx
import pytest

from changenet_trt.cli import main
from changenet_trt.data.synth import synthesize

from helpers import TAO_CLASSIFY_SPEC as SHIPPED_SPEC


@pytest.fixture(scope="module")
def spec_set(tmp_path_factory, reference_models):
    """A synthetic data set, TAO's shipped spec pointed at it, and a euclidean model that carries
    no recommended cutoff (as TAO's exports), so the spec's eval_margin decides."""
    root = str(tmp_path_factory.mktemp("spec"))
    synthesize(root, pairs=20, defect_rate=0.4, seed=9)
    with open(os.path.join(root, "dataset.csv"), newline="") as handle:
        rows = list(csv.reader(handle))
    with open(os.path.join(root, "line.csv"), "w", newline="") as handle:
        csv.writer(handle).writerows([[c for i, c in enumerate(r) if i != rows[0].index("label")] for r in rows])
    model = onnx.load(reference_models["euclidean_static16"])
    del model.metadata_props[:]
    bare = os.path.join(root, "tao_export.onnx")
    onnx.save(model, bare)
    spec = os.path.join(root, "experiment_spec_classify.yaml")
    with open(spec, "w") as handle:
        handle.write(SHIPPED_SPEC.format(root=root))
    return {"root": root, "spec": spec, "model": bare, "csv": os.path.join(root, "dataset.csv")}


def comparable(out_dir):
    with open(os.path.join(out_dir, "summary.json")) as handle:
        summary = json.load(handle)
    for key in ("seconds", "pairs_per_s", "files", "workers"):
        summary.pop(key)
    with open(os.path.join(out_dir, "scores.csv")) as handle:
        return summary, handle.read()


def test_eval_with_the_shipped_spec_equals_the_flags(tmp_path, spec_set, capsys):
    by_spec = tmp_path / "by_spec"
    assert main(["eval", spec_set["model"], "--spec", spec_set["spec"], "--out", str(by_spec), "--no-plots",
                 "--quiet"]) == 0
    captured = capsys.readouterr()
    by_flags = tmp_path / "by_flags"
    assert main(["eval", spec_set["model"], "--csv", spec_set["csv"], "--images", spec_set["root"] + "/",
                 "--ext", ".jpg", "--lights", "LowAngleLight,SolderLight,UniformLight,WhiteLight",
                 "--concat", "linear", "--normalization", "tao", "--batch-size", "16", "--output-kind", "euclidean",
                 "--cutoff", "0.005", "--out", str(by_flags), "--no-plots", "--quiet"]) == 0
    assert comparable(by_spec) == comparable(by_flags)
    summary, _ = comparable(by_spec)
    assert summary["cutoff"] == 0.005 and summary["pairs"] == 20
    assert summary["tao"]["line"].endswith("for Margin 0.005")
    # the report: what was used (interpolations resolved), what a flag overrode, what was ignored and why
    err = captured.err
    assert "evaluate.batch_size -> --batch-size 16" in err
    assert "model.classify.eval_margin = 0.005: the default cutoff" in err
    assert "dataset.classify.input_map + dataset.classify.num_input -> --lights LowAngleLight,SolderLight," in err
    assert ("evaluate.trt_engine = /results/gen_trt_engine/changenet-classify.trt: overridden by the command line "
            "(MODEL {})".format(spec_set["model"])) in err
    assert "ignored (training): train.* (16 keys), dataset.classify.fpratio_sampling" in err
    assert "ignored (used by infer, not by eval): dataset.classify.infer_dataset.* (2 keys), inference.trt_engine" in err
    assert "ignored (used with concat_type grid only): dataset.classify.grid_map" in err
    assert ("ignored (used by build, not by eval): gen_trt_engine.onnx_file, gen_trt_engine.trt_engine, "
            "gen_trt_engine.tensorrt.* (5 keys)") in err


def test_a_flag_wins_over_the_spec(tmp_path, spec_set, capsys):
    code = main(["eval", spec_set["model"], "--spec", spec_set["spec"], "--cutoff", "0.05", "--ext", ".png",
                 "--out", str(tmp_path / "o"), "--no-plots", "--quiet"])
    captured = capsys.readouterr()
    assert code == 2  # the set is .jpg: --ext .png finds no files, so the flag was used
    assert "dataset.classify.image_ext = .jpg: overridden by the command line (--ext .png)" in captured.err
    assert "--ext .jpg" in captured.err.splitlines()[-1]  # the error's hint: the files are .jpg
    assert main(["eval", spec_set["model"], "--spec", spec_set["spec"], "--cutoff", "0.05", "--out",
                 str(tmp_path / "o"), "--no-plots", "--quiet"]) == 0
    assert "cutoff     0.05 " in capsys.readouterr().out


def test_the_models_own_cutoff_wins_over_eval_margin(tmp_path, spec_set, reference_models, capsys):
    assert main(["eval", reference_models["euclidean_static16"], "--spec", spec_set["spec"], "--out",
                 str(tmp_path / "o"), "--no-plots", "--quiet"]) == 0
    assert "cutoff     0.045 " in capsys.readouterr().out


def test_infer_takes_the_spec_infer_dataset(tmp_path, spec_set, capsys):
    out = tmp_path / "scored.csv"
    assert main(["infer", spec_set["model"], "--spec", spec_set["spec"], "--out", str(out), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "dataset.classify.infer_dataset.csv_path -> --csv" in captured.err
    assert "inference.batch_size -> --batch-size 16" in captured.err
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 20 and all(r["decision"] == ("defect" if float(r["score"]) > 0.005 else "pass")
                                   for r in rows)


def test_build_dry_run_takes_gen_trt_engine(spec_set, reference_models, capsys, workdir):
    assert main(["build", reference_models["euclidean_dynamic"], "--spec", spec_set["spec"], "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "batch min 1 / opt 10 / max 10" in out and "FP32" in out and "workspace 1024 MiB" in out
    assert "engine:         /results/gen_trt_engine/changenet-classify.trt" in out


def write_spec(tmp_path, spec_set, replace):
    text = SHIPPED_SPEC.format(root=spec_set["root"])
    for old, new in replace:
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return str(path)


def test_a_grid_spec_sets_the_grid(tmp_path, spec_set, capsys):
    spec = write_spec(tmp_path, spec_set, [("concat_type: linear", "concat_type: grid"),
                                            ("x: 2\n      y: 2", "x: 1\n      y: 4")])
    assert main(["eval", spec_set["model"], "--spec", spec, "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "dataset.classify.grid_map -> --grid 1x4" in err
    # 4 lights in a 1x4 grid of a 512x128 input are 512x32 tiles, not the spec's 128x128
    assert err.splitlines()[-1].startswith("error: the spec's dataset.classify.image_height x image_width is "
                                           "128x128 but the model's 512x128 input")


@pytest.mark.parametrize("replace, message", [
    ([("task: classify", "task: segment")], "the spec's task is 'segment'"),
    ([("num_classes: 2", "num_classes: 2\n    num_golden: 3")], "3 golden images"),
    ([("num_input: 4", "num_input: 3")], "num_input is 3 but input_map names 4 lights"),
    ([("WhiteLight: 3", "WhiteLight: 5")], "input_map positions must be 0..3"),
    ([("data_type: FP32", "data_type: FP8")], "FP32, FP16 or INT8"),
    ([("batch_size: ${dataset.classify.batch_size}\ninference", "batch_size: ${dataset.classify.batch}\ninference")],
     "cannot resolve evaluate.batch_size"),
    ([("concat_type: linear", "concat_type: grid"), ("num_input: 4", "num_input: 3"),
      ("      WhiteLight: 3\n", "")], "TAO's loader then silently stacks them linearly"),
])
def test_spec_errors_are_one_line(tmp_path, spec_set, capsys, replace, message):
    spec = write_spec(tmp_path, spec_set, replace)
    command = "build" if "FP8" in str(replace) else "eval"
    argv = [command, spec_set["model"], "--spec", spec] + (["--dry-run"] if command == "build" else [
        "--out", str(tmp_path / "o"), "--quiet"])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def test_unreadable_specs(tmp_path, spec_set, capsys):
    cases = [(str(tmp_path / "absent.yaml"), "spec file not found"), (str(tmp_path), "spec file not found")]
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: [unclosed\n")
    cases.append((str(bad), "cannot read the spec"))
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    cases.append((str(listed), "not a YAML mapping"))
    for path, message in cases:
        assert main(["eval", spec_set["model"], "--spec", path]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


def test_commands_without_spec_settings_have_no_spec_flag(capsys):
    with pytest.raises(SystemExit):
        main(["reference-model", "x.onnx", "--spec", "s.yaml"])
    assert "unrecognized arguments: --spec" in capsys.readouterr().err


def test_pairs_on_the_command_line_win_over_the_spec_data_set(spec_set, reference_models, capsys, workdir):
    assert main(["fp16-check", reference_models["euclidean_dynamic"], "--spec", spec_set["spec"], "--pairs", "4",
                 "--out", str(workdir / "layers.txt")]) == 0
    captured = capsys.readouterr()
    assert "dataset.classify.test_dataset.csv_path = {}: overridden by the command line (--pairs 4)".format(
        spec_set["csv"]) in captured.err
    assert "pairs: 4 synthetic pairs" in captured.out
