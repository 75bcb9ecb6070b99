import argparse
import csv
import json
import os
import subprocess
import sys

import pytest

from changenet_trt.cli import build_parser, main
from changenet_trt.data.preprocess import get_normalization, parse_normalization
from changenet_trt.errors import ChangeNetError
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


def write_pairs(folder, count, seed=5):
    """``(golden paths, sample paths, truth)`` of ``count`` synthetic pairs written as PNG."""
    import cv2

    golden, sample, truth = make_pairs(count, seed=seed)
    gp, sp = [], []
    for i in range(count):
        gp.append(str(folder / "g{}.png".format(i)))
        sp.append(str(folder / "s{}.png".format(i)))
        cv2.imwrite(gp[-1], golden[i][:, :, ::-1])
        cv2.imwrite(sp[-1], sample[i][:, :, ::-1])
    return gp, sp, truth


@pytest.mark.parametrize("batch, said", [([], "dynamic batch"), (["--batch", "16"], "static batch 16")])
def test_reference_model_says_what_it_wrote(tmp_path, capsys, batch, said):
    out = str(tmp_path / "m.onnx")
    assert main(["reference-model", out, "--kind", "euclidean"] + batch) == 0
    assert capsys.readouterr().out.strip() == "wrote {} (euclidean output, {}, opset 17)".format(out, said)


def test_infer_writes_csv(reference_models, tmp_path, capsys):
    gp, sp, truth = write_pairs(tmp_path, 4)
    out_csv = str(tmp_path / "scores.csv")
    code = main(["infer", reference_models["learnable_dynamic"], "--golden"] + gp + ["--sample"] + sp + ["--out", out_csv])
    assert code == 0
    stdout = capsys.readouterr().out
    assert "4 pairs, 2 defects" in stdout
    with open(out_csv) as handle:
        rows = list(csv.DictReader(handle))
    assert [r["defect"] for r in rows] == ["1" if t else "0" for t in truth]
    assert rows[0]["golden"] == gp[0] and float(rows[1]["score"]) > 0.5


def test_infer_counts_one_pair_in_the_singular(reference_models, tmp_path, capsys):
    gp, sp, truth = write_pairs(tmp_path, 2)
    assert main(["infer", reference_models["learnable_dynamic"], "--golden", gp[1], "--sample", sp[1]]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("1 pair, {} at cutoff 0.5 (".format("1 defect" if truth[1] else "0 defects")), last


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


def subcommands():
    """``{name: parser}`` of every command, read off the real parser (not a list kept here)."""
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_help_lists_every_command():
    names = list(subcommands())
    assert len(names) >= 12 and "fp16-check" in names and "doctor" in names
    rc, out, err = run_cli("--help")
    assert rc == 0, err
    listed = out.split("COMMAND", 2)[-1]
    for name in names:
        assert "\n    {} ".format(name) in listed or "\n    {}\n".format(name) in listed, name


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_every_command_has_help_naming_all_its_options(name, capsys):
    with pytest.raises(SystemExit) as stop:
        main([name, "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: changenet-trt {} ".format(name))
    options = [s for a in subcommands()[name]._actions if a.help != argparse.SUPPRESS for s in a.option_strings]
    assert "--help" in options
    for option in options:
        assert option in out, option


def test_quiet_mentions_skipped_rows_only_where_there_are_rows():
    helps = {name: next(a.help for a in parser._actions if "--quiet" in a.option_strings)
             for name, parser in subcommands().items()
             if any("--quiet" in a.option_strings for a in parser._actions)}
    assert {"eval", "synth"} <= set(helps)
    assert "skipped rows" in helps["eval"]
    assert "rows" not in helps["synth"] and "progress bar" in helps["synth"]


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


# -- normalisation: one option, presets or custom mean/std, in every command that preprocesses ------
class Captured(ChangeNetError):
    """Raised by the stand-ins below once they have recorded what the command handed the library."""


def _record(monkeypatch, module, attr, pick):
    """Replace ``module.attr`` with a stand-in that records ``pick(args, kwargs)`` and stops the command."""
    import importlib

    seen = []

    def stand_in(*args, **kwargs):
        seen.append(pick(args, kwargs))
        raise Captured("recorded")

    monkeypatch.setattr(importlib.import_module(module), attr, stand_in)
    return seen


# command -> (its arguments without --normalization, the module that looks up the library call it
#             preprocesses with, that call, how to read the normalisation off it)
NORMALIZATION_CALLS = {
    "infer": (["MODEL", "--golden", "g.png", "--sample", "s.png"], "changenet_trt.api", "load",
              lambda a, kw: kw["normalization"]),
    "eval": (["MODEL", "--csv", "set.csv"], "changenet_trt.api", "load", lambda a, kw: kw["normalization"]),
    "bench": (["MODEL", "--end-to-end", "--csv", "set.csv"], "changenet_trt.tools.bench", "run_end_to_end",
              lambda a, kw: kw["normalization"]),
    "validate": (["MODEL", "--onnx", "MODEL"], "changenet_trt.evaluation.validate", "validate",
                 lambda a, kw: kw["normalization"]),
    "fp16-check": (["MODEL", "--pairs", "2"], "changenet_trt.cli.args", "synthetic_source",
                   lambda a, kw: a[2]),
    "build": (["MODEL", "--dry-run"], "changenet_trt.cli.commands.engine", "make_plan", lambda a, kw: a[0].normalization),
    # with --uint8-input, the normalisation goes into the model's graph
    "prepare": (["MODEL", "-o", "OUT", "--uint8-input"], "changenet_trt.cli.commands.engine", "add_uint8_input",
                lambda a, kw: kw["normalization"]),
    "triton-repo": (["MODEL", "-o", "OUT", "--uint8-input"], "changenet_trt.cli.commands.engine",
                    "write_model_repository", lambda a, kw: kw["normalization"]),
}


def test_every_command_that_preprocesses_takes_normalization():
    with_option = {name for name, parser in subcommands().items()
                   if any("--normalization" in a.option_strings for a in parser._actions)}
    assert with_option == set(NORMALIZATION_CALLS)


def _normalization_call(name, reference_models, tmp_path, monkeypatch):
    """The command line of NORMALIZATION_CALLS[name] (model and output filled in) and the list
    that records what its library call received."""
    argv, module, attr, pick = NORMALIZATION_CALLS[name]
    seen = _record(monkeypatch, module, attr, pick)
    fill = {"MODEL": reference_models["learnable_dynamic"], "OUT": str(tmp_path / "out")}
    return [fill.get(a, a) for a in argv], seen


@pytest.mark.parametrize("value", ["tao", "deepstream", "0.5,0.5,0.5/0.25,0.25,0.25", " 0.1,0.2,0.3/1,2,3 "])
@pytest.mark.parametrize("name", sorted(NORMALIZATION_CALLS))
def test_normalization_reaches_the_library(name, value, reference_models, monkeypatch, capsys, tmp_path):
    argv, seen = _normalization_call(name, reference_models, tmp_path, monkeypatch)
    assert main([name] + argv + ["--normalization", value]) == 2
    assert capsys.readouterr().err.strip() == "error: recorded"
    assert len(seen) == 1 and get_normalization(seen[0]) == parse_normalization(value)


@pytest.mark.parametrize("value", ["imagenet", "0.5,0.5/0.5,0.5,0.5", "0.5,0.5,0.5/0,1,1", "0.5,0.5,0.5"])
@pytest.mark.parametrize("name", sorted(NORMALIZATION_CALLS))
def test_malformed_normalization_is_one_error_line(name, value, reference_models, monkeypatch, capsys, tmp_path):
    argv, seen = _normalization_call(name, reference_models, tmp_path, monkeypatch)
    assert main([name] + argv + ["--normalization", value]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot read the normalisation"), lines
    assert repr(value) in lines[0] and not seen


def test_malformed_normalization_from_the_console_script(reference_models):
    rc, out, err = run_cli("bench", reference_models["learnable_dynamic"], "--normalization", "tao/deepstream")
    assert rc == 2 and out == ""
    assert err.strip().splitlines() == [err.strip()] and err.startswith("error: cannot read the normalisation")


def test_custom_normalization_scores_like_the_equal_preset(reference_models, tmp_path, capsys):
    gp, sp, _ = write_pairs(tmp_path, 4)
    model = reference_models["learnable_dynamic"]

    def scores(normalization):
        out_csv = str(tmp_path / "scores.csv")
        argv = ["infer", model, "--golden"] + gp + ["--sample"] + sp + ["--out", out_csv]
        assert main(argv + ["--normalization", normalization]) == 0
        with open(out_csv) as handle:
            return [float(row["score"]) for row in csv.DictReader(handle)]

    deepstream = scores("deepstream")
    assert scores("0.5,0.5,0.5/0.5,0.5,0.5") == deepstream
    assert scores("0.485,0.456,0.406/0.229,0.224,0.225") == scores("tao") != deepstream


def test_build_records_a_custom_normalization(reference_models, capsys):
    assert main(["build", reference_models["learnable_dynamic"], "--dry-run",
                 "--normalization", "0.5,0.5,0.5/0.25,0.25,0.25"]) == 0
    assert "preprocessing:  0.5,0.5,0.5/0.25,0.25,0.25" in capsys.readouterr().out


# -- contract names: one group, the same value in every command that reads a model ------------------
RENAMED = ["--sample-input", "test", "--golden-input", "ref", "--output", "logits", "--output-kind", "learnable"]


def test_contract_names_parse_to_one_value_in_every_command():
    from changenet_trt.cli.args import ContractNamesArgs
    from changenet_trt.contract import ContractNames

    with_group = {name: parser for name, parser in subcommands().items()
                  if any("--sample-input" in a.option_strings for a in parser._actions)}
    assert {"inspect", "infer", "eval", "prepare", "build", "bench", "validate", "fp16-check"} <= set(with_group)
    for name, parser in with_group.items():
        positionals = [a for a in parser._actions if not a.option_strings]
        required = [s for a in parser._actions if a.required and a.option_strings for s in (a.option_strings[0], "X")]
        args = parser.parse_args(["X"] * len(positionals) + required + RENAMED)
        assert ContractNamesArgs().parse(args) == ContractNames(
            sample_input="test", golden_input="ref", output="logits", output_kind="learnable"), name
        args = parser.parse_args(["X"] * len(positionals) + required)
        assert ContractNamesArgs().parse(args) == ContractNames() and not ContractNamesArgs().parse(args), name


@pytest.fixture(scope="module")
def renamed_model(tmp_path_factory):
    """A static-batch reference model whose tensors are not TAO's names."""
    from changenet_trt.models.reference import write_reference_model

    path = str(tmp_path_factory.mktemp("renamed") / "renamed.onnx")
    return write_reference_model(path, batch=4, sample_input="test", golden_input="ref", output="logits")


@pytest.mark.parametrize("command", ["inspect", "prepare", "infer"])
def test_contract_names_work_the_same_in_commands(command, renamed_model, tmp_path, capsys):
    if command == "infer":
        golden, sample, _ = write_pairs(tmp_path, 4)
        extra = ["--golden"] + golden + ["--sample"] + sample
    else:
        extra = {"inspect": ["--json"], "prepare": ["-o", str(tmp_path / "dynamic.onnx"), "--proof-batches", "1,3"]}[command]
    assert main([command, renamed_model] + extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "'test'" in err and len(err.splitlines()) == 1
    assert main([command, renamed_model] + extra + RENAMED) == 0
    out = capsys.readouterr().out
    if command == "prepare":
        from changenet_trt.contract import ContractNames, read_contract

        prepared = read_contract(str(tmp_path / "dynamic.onnx"),
                                 ContractNames(sample_input="test", golden_input="ref", output="logits"))
        assert prepared.static_batch is None and prepared.output == "logits"
    elif command == "inspect":
        assert json.loads(out)["sample_input"] == "test"
    else:
        assert "4 pairs, 2 defects" in out


def test_prepare_uint8_input_writes_a_dynamic_uint8_model_equal_to_host_normalisation(reference_models, tmp_path, capsys):
    import numpy as np

    import changenet_trt

    out = str(tmp_path / "u8.onnx")
    assert main(["prepare", reference_models["learnable_static16"], "-o", out, "--uint8-input",
                 "--normalization", "deepstream"]) == 0
    text = capsys.readouterr().out
    assert "the graph applies 'deepstream' normalisation" in text and str(tmp_path) not in text.replace(out, "")
    contract = changenet_trt.read_contract(out)
    assert contract.dynamic_batch and contract.input_dtype == "uint8"
    golden, sample = make_pairs(5, seed=3)[:2]
    with changenet_trt.load(out) as u8, changenet_trt.load(reference_models["learnable_static16"],
                                                          normalization="deepstream") as ref:
        assert np.allclose(u8.predict(golden, sample).scores, ref.predict(golden, sample).scores, atol=1e-5)


def test_prepare_normalization_without_uint8_input_is_refused(reference_models, tmp_path, capsys):
    assert main(["prepare", reference_models["learnable_static16"], "-o", str(tmp_path / "x.onnx"),
                 "--normalization", "tao"]) == 2
    assert "--uint8-input" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def test_triton_repo_writes_a_strictly_valid_config(reference_models, tmp_path, capsys):
    pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient (the triton extra) is not installed")
    from changenet_trt.engine.triton_repo import parse_config

    repo = tmp_path / "repo"
    assert main(["triton-repo", reference_models["euclidean_dynamic"], "-o", str(repo), "--name", "cn",
                 "--platform", "onnxruntime_onnx", "--max-batch", "8", "--instances", "2"]) == 0
    config = parse_config((repo / "cn" / "config.pbtxt").read_text())
    assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 8
    assert config.instance_group[0].count == 2
    assert (repo / "cn" / "1" / "model.onnx").exists()
    capsys.readouterr()
    assert main(["triton-repo", reference_models["euclidean_dynamic"], "-o", str(repo), "--name", "cn"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_abbreviated_options_are_refused_not_guessed(reference_models, tmp_path):
    # `--out` on inspect (which has --output, a tensor name) once silently meant --output
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["inspect", reference_models["learnable_static16"], "--out", "x"])
    assert exc.value.code == 2


def test_runtime_group_passes_triton_options(monkeypatch):
    from changenet_trt.cli.args import RuntimeArgs

    parser = argparse.ArgumentParser()
    RuntimeArgs().add_to(parser)
    options = RuntimeArgs().parse(parser.parse_args(["--triton-timeout", "2.5", "--no-shared-memory"]))
    assert options.backend_options == {"timeout_s": 2.5, "shared_memory": False}
    with pytest.raises(SystemExit):
        parser.parse_args(["--triton-timeout", "0"])


def test_library_warnings_print_as_warning_lines():
    code, out, err = run_cli("reference-model", os.devnull + "/x.onnx")
    assert code == 2 and err.startswith("error: ")
    proc = subprocess.run([sys.executable, "-c",
                           "import logging, sys\n"
                           "from changenet_trt.cli import main\n"
                           "sys.argv = ['x']\n"
                           "import changenet_trt.cli as cli\n"
                           "h = logging.StreamHandler(); h.setFormatter(cli._UserFormatter(False))\n"
                           "logging.getLogger().addHandler(h)\n"
                           "logging.getLogger('changenet_trt.api').warning('cutoff 3 is above every score')\n"],
                          capture_output=True, text=True, timeout=60)
    assert proc.stderr.strip() == "warning: cutoff 3 is above every score"


# -- argument groups: parsed by the command that registered them ------------------------------------
def _minimal_argv(parser):
    """Placeholder values for a command's positionals and required options."""
    positionals = [a for a in parser._actions if not a.option_strings]
    required = [s for a in parser._actions if a.required and a.option_strings for s in (a.option_strings[0], "X")]
    return ["X"] * len(positionals) + required


def test_every_command_receives_the_values_of_the_groups_it_registered(monkeypatch):
    parser = build_parser()
    for name, command in parser.commands.items():
        received = []
        for key, group in command.groups.items():
            monkeypatch.setattr(group, "parse", lambda args, key=key: ("parsed", key))
        monkeypatch.setattr(command, "run", lambda args, values, received=received: received.append(values) or 0)
        args = parser.parse_args([name] + _minimal_argv(command.parser))
        assert command.execute(args) == 0
        assert len(received) == 1
        assert vars(received[0]) == {key: ("parsed", key) for key in command.groups}, name


def test_a_bad_group_value_stops_the_command_before_it_runs(monkeypatch, capsys):
    from changenet_trt.cli.commands import data

    ran = []
    monkeypatch.setattr(data.Infer, "run", lambda self, args, values: ran.append(values) or 0)
    assert main(["infer", "m.onnx", "--golden", "g.png", "--sample", "s.png", "--providers", ","]) == 2
    assert "--providers names no provider" in capsys.readouterr().err and not ran


def test_build_defaults_are_the_engines():
    from changenet_trt.engine.calibration import DEFAULT_CALIB_BATCHES
    from changenet_trt.engine.precision import DEFAULT_PROOF_PAIRS, INT8_METHODS

    args = subcommands()["build"].parse_args(["m.onnx"])
    assert (args.calib_batches, args.proof_pairs, args.calib_method) == (
        DEFAULT_CALIB_BATCHES, DEFAULT_PROOF_PAIRS, INT8_METHODS[0])
