"""Issue 19: nothing of the user's is deleted or overwritten, every bad input is one error line.

Each test here was written against a case that lost a user's file or ended in a traceback.
"""

import os

import pytest
from test_reliability import write_set

from changenet_trt import files
from changenet_trt.cli import main
from changenet_trt.data.dataset import LightLayout
from changenet_trt.errors import InputError
from changenet_trt.evaluation.evaluate import evaluate

SINGLE = LightLayout(lights=(), ext=".png")


@pytest.fixture
def small_set(tmp_path):
    return write_set(str(tmp_path / "set"), [("a", "PASS", 100, 101), ("b", "MISSING", 100, 180),
                                             ("c", "PASS", 90, 92), ("d", "MISSING", 40, 200)])


def run_eval(model, csv_path, out, capsys, *extra):
    capsys.readouterr()
    code = main(["eval", model, "--csv", csv_path, "--lights", "none", "--ext", ".png", "--quiet", "--no-plots",
                 "--out", str(out)] + list(extra))
    return code, capsys.readouterr().err


# -- case 1: eval --out never replaces a folder holding anything it did not write ---------------
def test_eval_keeps_a_folder_whose_files_only_look_like_results(tmp_path, small_set, reference_models, capsys):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.png").write_bytes(b"\x89PNG my holiday")
    (out / "scores.csv").write_text("my own scores\n")
    code, err = run_eval(reference_models["learnable_dynamic"], small_set, out, capsys)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert "holiday.png" in err and "scores.csv" in err
    assert (out / "holiday.png").read_bytes() == b"\x89PNG my holiday"
    assert (out / "scores.csv").read_text() == "my own scores\n"
    assert sorted(os.listdir(tmp_path)) == ["photos", "set"]


def test_eval_refuses_its_own_set_once_a_user_edited_a_file(tmp_path, small_set, reference_models, capsys):
    out = tmp_path / "results"
    model = reference_models["learnable_dynamic"]
    assert run_eval(model, small_set, out, capsys)[0] == 0
    assert run_eval(model, small_set, out, capsys)[0] == 0  # its own set is replaced
    with open(str(out / "scores.csv"), "a") as handle:
        handle.write("my note\n")
    code, err = run_eval(model, small_set, out, capsys)
    assert code == 2 and "scores.csv" in err and err.count("\n") == 1
    assert (out / "scores.csv").read_text().endswith("my note\n")


def test_eval_out_as_the_folder_of_the_rows_images_is_refused(tmp_path, reference_models, capsys):
    """CSV in one folder, rows naming ``../pngs``: --out pngs would delete the inputs."""
    root = tmp_path / "data"
    csv_path = write_set(str(root), [("a", "PASS", 100, 101), ("b", "MISSING", 100, 180)])
    lists = tmp_path / "lists"
    lists.mkdir()
    text = open(csv_path).read().replace("sample,golden", "../data/sample,../data/golden")
    (lists / "rows.csv").write_text(text)
    before = sorted(os.listdir(str(root / "sample")))
    for out in (root / "sample", root / "golden"):
        code, err = run_eval(reference_models["learnable_dynamic"], str(lists / "rows.csv"), out, capsys,
                             "--images", str(lists))
        assert code == 2 and err.startswith("error: ") and "holds the input" in err, err
    assert sorted(os.listdir(str(root / "sample"))) == before
    # and the run still works once --out is elsewhere
    assert run_eval(reference_models["learnable_dynamic"], str(lists / "rows.csv"), tmp_path / "r", capsys,
                    "--images", str(lists))[0] == 0


def test_eval_out_holding_one_input_image_is_refused_even_when_empty_of_results(tmp_path, reference_models):
    root = tmp_path / "data"
    csv_path = write_set(str(root), [("a", "PASS", 100, 101)])
    with pytest.raises(InputError, match="holds the input"):
        evaluate(reference_models["learnable_dynamic"], csv_path, images_dir=str(root), out_dir=str(root / "sample"),
                 layout=SINGLE, progress=False, plots=False)
    assert os.listdir(str(root / "sample")) == ["a.png"]


# -- case 9: a symbolic link --out writes into its target ---------------------------------------
def test_eval_out_through_a_symbolic_link_replaces_the_target_set(tmp_path, small_set, reference_models, capsys):
    model = reference_models["learnable_dynamic"]
    target = tmp_path / "run1"
    assert run_eval(model, small_set, target, capsys, "--cutoff", "0.5")[0] == 0
    link = tmp_path / "latest"
    link.symlink_to(target, target_is_directory=True)
    assert run_eval(model, small_set, link, capsys, "--cutoff", "0.75")[0] == 0
    assert link.is_symlink() and os.readlink(str(link)) == str(target)
    assert '"cutoff": 0.75' in (target / "summary.json").read_text()
    assert sorted(os.listdir(str(tmp_path))) == ["latest", "run1", "set"]  # no staging folder or link left
    assert files.foreign_entries(str(target)) == []
