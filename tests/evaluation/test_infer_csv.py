"""Scoring a TAO-layout CSV without labels (``infer --csv``), and eval carrying extra columns."""

import csv
import os

import numpy as np
import pytest

from changenet_trt.cli import main
from changenet_trt.data.synth import synthesize
from changenet_trt.evaluation.evaluate import evaluate
from changenet_trt.evaluation.inference import infer_csv


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


@pytest.fixture(scope="module")
def line_set(tmp_path_factory):
    """24 synthetic pairs as the line writes them: no label column, two columns of the line's own
    (board id before the TAO columns, a lot number with leading zeros after), and
    row 6 (CSV line 7) missing a light."""
    root = str(tmp_path_factory.mktemp("line"))
    result = synthesize(root, pairs=24, defect_rate=0.4, seed=5)
    rows = read_rows(result.csv_path)
    header = rows[0]
    keep = [i for i, name in enumerate(header) if name != "label"]
    line_csv = os.path.join(root, "line.csv")
    with open(line_csv, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["board_id"] + [header[i] for i in keep] + ["lot"])
        for k, row in enumerate(rows[1:]):
            writer.writerow(["B{:03d}".format(k)] + [row[i] for i in keep] + ["0{}".format(k % 3)])
    missing = os.path.join(root, "images", "inspect", "board_000", "{}_UniformLight.jpg".format(
        result.rows[5].object_name))
    os.remove(missing)
    return {"root": root, "csv": line_csv, "labelled_csv": result.csv_path, "missing": missing,
            "header": ["board_id"] + [header[i] for i in keep] + ["lot"], "input": read_rows(line_csv)}


def test_cli_scores_a_csv_without_labels(tmp_path, line_set, reference_models, capsys):
    out = tmp_path / "scored.csv"
    code = main(["infer", reference_models["learnable_dynamic"], "--csv", line_set["csv"], "--out", str(out),
                 "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "24 rows: 23 scored, 1 skipped" in captured.out
    assert "line 7 (object {}): missing file: {}".format(line_set["input"][6][3], line_set["missing"]) in captured.out
    assert "pairs/s" in captured.out
    rows = read_rows(out)
    # every input column in its order, then score and decision; every input row in its order
    assert rows[0] == line_set["header"] + ["score", "decision"]
    assert len(rows) == len(line_set["input"])
    for written, given in zip(rows[1:], line_set["input"][1:]):
        assert written[:-2] == given  # as written: leading zeros kept
    assert rows[6][-2:] == ["", "skipped"]
    decisions = [r[-1] for r in rows[1:]]
    assert decisions.count("skipped") == 1 and set(decisions) == {"pass", "defect", "skipped"}
    for row in rows[1:]:
        if row[-1] != "skipped":
            assert row[-1] == ("defect" if float(row[-2]) > 0.5 else "pass")


def test_unlabeled_scores_equal_eval_scores(line_set, reference_models):
    """The same pairs score the same with and without labels."""
    unlabeled = infer_csv(reference_models["euclidean_dynamic"], line_set["csv"], progress=False)
    labelled = evaluate(reference_models["euclidean_dynamic"], line_set["labelled_csv"], out_dir=None, progress=False)
    got = {p.line: float(s) for p, s in zip(unlabeled.dataset.pairs, unlabeled.scores)}
    want = {labelled.dataset.pairs[i].line: float(s) for i, s in zip(labelled.scored, labelled.scores)}
    assert set(got) == set(want)
    assert np.allclose([got[k] for k in sorted(got)], [want[k] for k in sorted(got)], rtol=0, atol=0)


def test_strict_stops_at_the_missing_light(tmp_path, line_set, reference_models, capsys):
    out = tmp_path / "scored.csv"
    code = main(["infer", reference_models["learnable_dynamic"], "--csv", line_set["csv"], "--out", str(out),
                 "--strict"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "line 7" in err and line_set["missing"] in err and "--strict" in err
    assert not out.exists()


def test_infer_modes_are_checked_before_any_work(tmp_path, line_set, reference_models, capsys):
    model = reference_models["learnable_dynamic"]
    cases = [
        (["infer", model, "--csv", line_set["csv"]], "--out OUT.csv"),
        (["infer", model, "--csv", line_set["csv"], "--out", str(tmp_path / "o.csv"), "--golden", "g.png",
          "--sample", "s.png"], "not both"),
        (["infer", model], "--golden PATH... --sample PATH..., or --csv"),
        (["infer", model, "--csv", line_set["csv"], "--out", line_set["csv"]], "scores CSV"),
    ]
    for argv, text in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and text in err and err.count("\n") == 1, err


def test_csv_without_the_tao_columns_is_refused(tmp_path, reference_models, capsys):
    path = tmp_path / "bad.csv"
    path.write_text("input_path,golden_path,name\na,b,c\n")
    assert main(["infer", reference_models["learnable_dynamic"], "--csv", str(path), "--out",
                 str(tmp_path / "o.csv")]) == 2
    err = capsys.readouterr().err
    assert "lacks the column(s) object_name" in err and "label" not in err.split("found")[0]


def test_input_columns_named_like_ours_are_kept(tmp_path, line_set, reference_models):
    rows = line_set["input"]
    path = os.path.join(line_set["root"], "with_score.csv")
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows([rows[0] + ["score"]] + [r + ["old"] for r in rows[1:]])
    out = tmp_path / "scored.csv"
    infer_csv(reference_models["learnable_dynamic"], path, out_csv=str(out), progress=False)
    written = read_rows(out)
    assert written[0][-3:] == ["score (input)", "score", "decision"]
    assert all(r[-3] == "old" for r in written[1:])


def test_eval_carries_extra_columns_into_scores_csv(tmp_path, line_set, reference_models):
    rows = read_rows(line_set["labelled_csv"])
    path = os.path.join(line_set["root"], "labelled_extra.csv")
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows([["board_id"] + rows[0] + ["defect"]] +
                                     [["B{}".format(k)] + r + ["x{}".format(k)] for k, r in enumerate(rows[1:])])
    result = evaluate(reference_models["learnable_dynamic"], path, out_dir=str(tmp_path / "out"), plots=False,
                      progress=False)
    written = read_rows(tmp_path / "out" / "scores.csv")
    # eval's columns, then the input's other columns in their order (one named like ours is marked)
    assert written[0] == ["line", "object_name", "input_path", "golden_path", "label", "score", "defect",
                          "board_id", "component", "defect (input)"]
    assert len(written) - 1 == len(result.scored) == 23
    for row in written[1:]:
        k = int(row[0]) - 2
        assert row[7:] == ["B{}".format(k), rows[k + 1][rows[0].index("component")], "x{}".format(k)]
