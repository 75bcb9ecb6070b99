"""eval end to end: broken rows, scores equal to a plain TAO-style pipeline, outputs, CLI, demo."""

import csv
import io
import json
import os
import shutil

import cv2
import numpy as np
import pytest

from changenet_trt.cli import main
from changenet_trt.data.dataset import TAO_LIGHTS
from changenet_trt.data.synth import synthesize
from changenet_trt.errors import DatasetError, InputError
from changenet_trt.evaluation import plots
from changenet_trt.evaluation.evaluate import evaluate, format_summary

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
PLOT_LEFT, PLOT_TOP = plots.MARGIN_LEFT, plots.MARGIN_TOP
PLOT_RIGHT, PLOT_BOTTOM = plots.WIDTH - plots.MARGIN_RIGHT, plots.HEIGHT - plots.MARGIN_BOTTOM
LEGEND_EDGE = (160, 160, 160)
SUMMARY_KEYS = {"pairs", "skipped", "tp", "fp", "tn", "fn", "fpr", "defect_capture", "tao", "tao_7_1", "cutoff",
                "pairs_per_s", "per_defect_type_capture", "sweep", "target_fpr", "target_capture", "skipped_rows"}


def tao_style_scores(model, csv_path, images_dir, kind):
    """An independent TAO Deploy-style pipeline: read the CSV row by row, open each light, float32
    resize, CHW, normalise, concatenate along H, run ONNX Runtime, score the raw output.
    Rows with a missing or undecodable file are skipped. Returns {csv line: score}."""
    import onnxruntime as ort

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    scores = {}
    with open(csv_path, newline="") as handle:
        reader = csv.DictReader(handle)
        for row in reader:
            line = reader.line_num
            inputs = []
            for folder in (row["input_path"], row["golden_path"]):
                lights = []
                for light in TAO_LIGHTS:
                    path = os.path.join(images_dir, folder, "{}_{}.jpg".format(row["object_name"], light))
                    image = cv2.imread(path) if os.path.exists(path) else None
                    if image is None:
                        break
                    image = cv2.resize(np.asarray(image[:, :, ::-1], np.float32), (128, 128))
                    image = (image.transpose(2, 0, 1) / 255.0 - MEAN[:, None, None]) / STD[:, None, None]
                    lights.append(image)
                if len(lights) < 4:
                    break
                inputs.append(np.concatenate(lights, axis=1)[None].astype(np.float32))
            if len(inputs) < 2:
                continue
            raw = session.run(None, {"input_1": inputs[0], "input_2": inputs[1]})[0]
            if kind == "learnable":
                e = np.exp(raw[0] - raw[0].max())
                scores[line] = float(e[1] / e.sum())
            else:
                scores[line] = float(np.ravel(raw)[0])
    return scores


def read_plot(path):
    image = cv2.imread(str(path))
    assert image is not None and image.shape == (plots.HEIGHT, plots.WIDTH, 3)
    return image


def legend_box(image):
    """(x0, y0, x1, y1) of the legend's grey frame, or None."""
    edge = np.all(image == LEGEND_EDGE, axis=2)
    # the frame's sides are long runs of that grey; anti-aliased text may hold a few stray pixels
    rows = np.flatnonzero(edge.sum(axis=1) >= 20)
    cols = np.flatnonzero(edge.sum(axis=0) >= 20)
    return (cols.min(), rows.min(), cols.max(), rows.max()) if rows.size and cols.size else None


def colour_mask(image, bgr, tolerance=3):
    """bool [H, W]: pixels inside the plot area (frame and legend excluded) within ``tolerance`` of ``bgr``."""
    mask = np.all(np.abs(image.astype(int) - np.array(bgr)) <= tolerance, axis=2)
    inside = np.zeros_like(mask)
    inside[PLOT_TOP + 1:PLOT_BOTTOM, PLOT_LEFT + 1:PLOT_RIGHT] = True
    box = legend_box(image)
    if box is not None:
        inside[box[1]:box[3] + 1, box[0]:box[2] + 1] = False
    return mask & inside


def check_histogram(image, series, bins, markers=()):
    """Assert ``image`` shows the overlaid histograms of ``series`` (a list, series i in colour i):
    every bin that only one series fills has its bar top at the row its count maps to, empty bins
    have no bar, and each marker is a dashed black line at its x."""
    values = [np.asarray(v, dtype=np.float64) for v in series]
    everything = np.concatenate(values + [np.asarray(markers, dtype=np.float64)])
    low, high = everything.min(), everything.max()
    pad = (high - low) * 0.02
    edges = np.linspace(low, high, bins + 1)
    counts = [np.histogram(v, bins=edges)[0] for v in values]
    y_max = max(int(c.max()) for c in counts) * 1.08

    def px(x):
        return PLOT_LEFT + (x - (low - pad)) / (high - low + 2 * pad) * (PLOT_RIGHT - PLOT_LEFT)

    def py(count):
        return PLOT_BOTTOM - count / y_max * (PLOT_BOTTOM - PLOT_TOP)

    xs = np.round(px(edges)).astype(int)
    box = legend_box(image)
    checked = 0
    for index, count in enumerate(counts):
        fill = tuple(int(round(0.45 * c + 0.55 * 255)) for c in plots.color(index))
        mask = colour_mask(image, plots.color(index)) | colour_mask(image, fill)
        for i, n in enumerate(count):
            if any(counts[k][i] for k in range(len(counts)) if k != index):
                continue  # two series blended in this bin
            top = int(round(py(n)))
            if box is not None and xs[i + 1] >= box[0] and xs[i] <= box[2] and top <= box[3] + 1:
                continue  # the bar's top is under the legend
            rows = np.flatnonzero(mask[:, xs[i] + 2:xs[i + 1] - 1].any(axis=1))
            if n == 0:
                assert rows.size == 0, "series {} has a bar in empty bin {}".format(index, i)
            else:
                assert rows.size and abs(int(rows.min()) - top) <= 1, \
                    "series {} bin {}: bar top {} expected at row {}".format(index, i, rows.min() if rows.size else None, top)
                checked += 1
    assert checked >= 3
    black = colour_mask(image, plots.BLACK, tolerance=40)
    for x in markers:
        column = black[:, int(round(px(x))) - 1:int(round(px(x))) + 2].any(axis=1)
        assert column.sum() >= 0.3 * (PLOT_BOTTOM - PLOT_TOP), "no dashed line at {}".format(x)


def curve_coverage(image, xs, ys, xlim, ylim, bgr):
    """Fraction of points sampled along the polyline ``(xs, ys)`` (data units on axes ``xlim`` x
    ``ylim``) that have a pixel of colour ``bgr`` within one pixel."""
    mask = colour_mask(image, bgr)
    found = total = 0
    for a, b, c, d in zip(xs[:-1], ys[:-1], xs[1:], ys[1:]):
        for t in np.linspace(0.0, 1.0, 12):
            x = (a + (c - a) * t - xlim[0]) / (xlim[1] - xlim[0])
            y = (b + (d - b) * t - ylim[0]) / (ylim[1] - ylim[0])
            col = int(round(PLOT_LEFT + x * (PLOT_RIGHT - PLOT_LEFT)))
            row = int(round(PLOT_BOTTOM - y * (PLOT_BOTTOM - PLOT_TOP)))
            total += 1
            found += bool(mask[max(row - 1, 0):row + 2, max(col - 1, 0):col + 2].any())
    return found / total


@pytest.fixture(scope="module")
def broken_set(tmp_path_factory):
    """40 synthetic pairs; row 5 lacks a light file, row 11 has a corrupt one, row 17 a resized one."""
    root = str(tmp_path_factory.mktemp("broken"))
    result = synthesize(root, pairs=40, defect_rate=0.4, seed=21)
    rows = result.rows
    missing = os.path.join(root, "images", "inspect", "board_000", "{}_SolderLight.jpg".format(rows[3].object_name))
    os.remove(missing)  # data row 4 -> CSV line 5
    corrupt = os.path.join(root, "images", "golden", "board_000", "{}_WhiteLight.jpg".format(rows[9].object_name))
    with open(corrupt, "wb") as handle:
        handle.write(b"\xff\xd8 truncated jpeg")  # CSV line 11
    resized = os.path.join(root, "images", "inspect", "board_000", "{}_UniformLight.jpg".format(rows[15].object_name))
    image = cv2.imread(resized)
    cv2.imwrite(resized, cv2.resize(image, (150, 140)))  # CSV line 17: a wrongly sized light still works
    return {"root": root, "csv": result.csv_path, "missing": missing, "corrupt": corrupt, "rows": rows}


@pytest.mark.parametrize("kind", ["learnable", "euclidean"])
def test_eval_skips_broken_rows_and_matches_a_tao_style_pipeline(tmp_path, broken_set, reference_models, kind):
    model = reference_models["{}_dynamic".format(kind)]
    log = io.StringIO()
    result = evaluate(model, broken_set["csv"], out_dir=str(tmp_path / "out"), log=log, batch_size=8,
                      target_fpr=0.05, target_capture=0.9)
    summary = result.summary
    assert summary["rows"] == 40 and summary["pairs"] == 38 and summary["skipped"] == 2
    lines = [p["line"] for p in summary["skipped_rows"]]
    assert lines == [5, 11]
    assert summary["skipped_rows"][0]["path"] == broken_set["missing"]
    assert summary["skipped_rows"][1]["path"] == broken_set["corrupt"]
    assert "cannot decode" in summary["skipped_rows"][1]["reason"]
    text = log.getvalue()
    assert "line 5" in text and broken_set["missing"] in text and "line 11" in text and broken_set["corrupt"] in text

    want = tao_style_scores(model, broken_set["csv"], broken_set["root"], kind)
    assert sorted(want) == sorted(p.line for p in (result.dataset.pairs[i] for i in result.scored))
    with open(tmp_path / "out" / "scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 38
    for row in rows:
        assert float(row["score"]) == pytest.approx(want[int(row["line"])], abs=1e-5, rel=1e-5)
        plan = broken_set["rows"][int(row["line"]) - 2]
        assert row["object_name"] == plan.object_name and row["label"] == plan.label
        assert row["defect"] == str(int(float(row["score"]) > summary["cutoff"]))

    with open(tmp_path / "out" / "summary.json") as handle:
        written = json.load(handle)
    assert SUMMARY_KEYS <= set(written)
    tp, fp, tn, fn = (written[k] for k in ("tp", "fp", "tn", "fn"))
    assert tp + fp + tn + fn == 38
    assert written["fpr"] == pytest.approx(fp / (fp + tn))
    assert written["defect_capture"] == pytest.approx(tp / (tp + fn))
    # TAO Deploy 7.2+: False Alarm = FP / PASS, False Negative = FN / defect; <= 7.1: both / all pairs
    assert written["tao"]["false_alarm"] == pytest.approx(100 * fp / (fp + tn))
    assert written["tao"]["false_negative"] == pytest.approx(100 * fn / (tp + fn))
    assert written["tao_7_1"]["false_alarm"] == pytest.approx(100 * fp / 38)
    assert written["tao_7_1"]["false_negative"] == pytest.approx(100 * fn / 38)
    assert written["tao"]["line"].startswith("Tot Comp 38 Total Accuracy ")
    assert written["target_fpr"]["fpr"] <= 0.05 and written["target_capture"]["defect_capture"] >= 0.9
    assert set(written["per_defect_type_capture"]) == {r.label for r in broken_set["rows"]} - {"PASS"}
    assert written["pairs_per_s"] > 0
    truth = result.dataset.is_defect[result.scored]
    check_histogram(read_plot(written["files"]["scores_png"]), [result.scores[~truth], result.scores[truth]], 50,
                    markers=[summary["cutoff"]])
    roc = read_plot(written["files"]["roc_png"])
    assert curve_coverage(roc, result.sweep.fpr[::-1], result.sweep.capture[::-1], (0, 1), (0, 1.02),
                          plots.color(0)) >= 0.9
    sweep_png = read_plot(written["files"]["sweep_png"])
    cutoffs = result.sweep.cutoffs
    finite = np.isfinite(cutoffs)
    limits = (cutoffs[finite].min(), cutoffs[finite].max())
    for index, rate in enumerate((result.sweep.fpr, result.sweep.capture)):
        assert curve_coverage(sweep_png, cutoffs[finite], rate[finite], limits, (0, 1.02), plots.color(index)) >= 0.9
    assert "skipped    2 row(s):" in format_summary(result)


def test_each_plot_has_its_own_title(tmp_path, broken_set, reference_models, monkeypatch):
    titles = {}

    def record(draw):
        def wrapped(*args, **kwargs):
            path = draw(*args, **kwargs)
            titles[os.path.basename(path)] = [a for a in args if isinstance(a, str) and " - " in a][0]
            return path
        return wrapped

    for name in ("histogram_png", "roc_png", "lines_png"):
        monkeypatch.setattr(plots, name, record(getattr(plots, name)))
    evaluate(reference_models["learnable_dynamic"], broken_set["csv"], out_dir=str(tmp_path / "out"), progress=False)
    assert titles["scores.png"].startswith("Scores, PASS vs defect - ")
    assert titles["scores_by_type.png"].startswith("Scores by defect type - ")
    assert len(set(titles.values())) == len(titles) >= 4


def test_static_batch_model_gives_the_same_scores(broken_set, reference_models):
    dynamic = evaluate(reference_models["learnable_dynamic"], broken_set["csv"], out_dir=None, progress=False)
    static = evaluate(reference_models["learnable_static16"], broken_set["csv"], out_dir=None, progress=False)
    assert np.allclose(dynamic.scores, static.scores, atol=1e-6)
    assert static.summary["batch_size"] == 16


def test_strict_stops_with_the_line_and_path(broken_set, reference_models):
    with pytest.raises(DatasetError, match="line 5 .*SolderLight.jpg"):
        evaluate(reference_models["learnable_dynamic"], broken_set["csv"], out_dir=None, strict=True, progress=False)
    shutil.copy(broken_set["csv"], broken_set["csv"] + ".bak")
    try:
        with open(broken_set["csv"]) as handle:
            lines = handle.readlines()
        with open(broken_set["csv"], "w") as handle:  # keep only the header and the corrupt row
            handle.writelines([lines[0], lines[10]])
        with pytest.raises(DatasetError, match="line 2 .*WhiteLight.jpg"):
            evaluate(reference_models["learnable_dynamic"], broken_set["csv"], out_dir=None, strict=True,
                     progress=False)
        with pytest.raises(DatasetError, match="could be decoded"):
            evaluate(reference_models["learnable_dynamic"], broken_set["csv"], out_dir=None, progress=False,
                     log=io.StringIO())
    finally:
        shutil.move(broken_set["csv"] + ".bak", broken_set["csv"])


def test_layout_must_fit_the_model(broken_set, reference_models):
    from changenet_trt.data.dataset import LightLayout

    with pytest.raises(InputError, match="equal tiles"):
        evaluate(reference_models["learnable_dynamic"], broken_set["csv"], out_dir=None, progress=False,
                 layout=LightLayout(lights=TAO_LIGHTS[:3]), log=io.StringIO())


def test_cli_eval_and_synth(tmp_path, broken_set, reference_models, capsys):
    out = tmp_path / "cli"
    code = main(["eval", reference_models["euclidean_dynamic"], "--csv", broken_set["csv"], "--out", str(out),
                 "--cutoff", "0.05", "--target-fpr", "0.01", "--no-plots", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0
    assert "FPR" in captured.out and "capture" in captured.out and "line 5" in captured.out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cutoff"] == 0.05 and not (out / "roc.png").exists()

    assert main(["synth", str(tmp_path / "syn"), "--pairs", "3", "--seed", "1", "--ext", ".png"]) == 0
    assert (tmp_path / "syn" / "dataset.csv").exists()
    assert "wrote 3 pairs" in capsys.readouterr().out


def test_cli_errors_are_one_line(tmp_path, broken_set, reference_models, capsys):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert main(["eval", reference_models["learnable_dynamic"], "--csv", str(empty), "--images", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: CSV file") and err.count("\n") == 1 and "Traceback" not in err
    code = main(["eval", reference_models["learnable_dynamic"], "--csv", broken_set["csv"], "--strict", "--quiet",
                 "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2 and "line 5" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as info:
        main(["eval", reference_models["learnable_dynamic"], "--csv", broken_set["csv"], "--target-fpr", "2"])
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        main(["synth", str(tmp_path / "x"), "--defect-rate", "-1"])


def test_demo_runs_the_whole_pipeline(tmp_path, capsys):
    from changenet_trt.tools.demo import run_demo

    assert run_demo(str(tmp_path / "demo"), pairs=40, progress=False) == 0
    out = capsys.readouterr().out
    assert "demo result: FPR" in out and "pairs/s" in out and "roc.png" in out
    summary = json.loads((tmp_path / "demo" / "eval" / "summary.json").read_text())
    assert summary["pairs"] == 40 and summary["defect_pairs"] == 12


def test_demo_with_one_pass_pair_reports_what_it_cannot_compute(tmp_path, capsys):
    from changenet_trt.tools.demo import run_demo

    assert run_demo(str(tmp_path / "demo"), pairs=1, progress=False) == 0
    out = capsys.readouterr().out
    assert "target fpr no defect pairs: no capture to maximise" in out
    assert "target capture no defect pairs: capture is undefined" in out
    summary = json.loads((tmp_path / "demo" / "eval" / "summary.json").read_text())
    assert summary["target_fpr"]["cutoff"] is None and summary["defect_capture"] is None


class Terminal(io.StringIO):
    """A text stream that says it is a terminal, as stderr does in an interactive shell."""

    def isatty(self):
        return True


def test_eval_progress_bar_only_on_a_terminal(broken_set, reference_models):
    model = reference_models["learnable_dynamic"]
    terminal = Terminal()
    evaluate(model, broken_set["csv"], out_dir=None, log=terminal)
    text = terminal.getvalue()
    assert "\r" in text and "eval" in text and "39/39" in text  # row 5 was set aside before the run
    assert "line 5" in text and "line 11" in text  # warnings are printed above the bar, not lost
    log_file = io.StringIO()
    evaluate(model, broken_set["csv"], out_dir=None, log=log_file)
    assert "\r" not in log_file.getvalue() and "eval" not in log_file.getvalue()
    assert [line.startswith("warning: ") for line in log_file.getvalue().splitlines()] == [True, True]
    quiet = Terminal()
    evaluate(model, broken_set["csv"], out_dir=None, log=quiet, progress=False)
    assert quiet.getvalue() == ""  # --quiet: skipped rows are only counted and listed in the summary


def test_histogram_png_draws_each_series_where_its_values_are(tmp_path):
    rng = np.random.default_rng(1)
    low = rng.normal(0.2, 0.05, 300)
    high = rng.normal(0.8, 0.05, 120)
    path = plots.histogram_png({"PASS": low, "defect": np.append(high, np.nan)}, tmp_path / "h.png", "title", "x",
                               bins=40, markers={"cutoff": 0.5})
    image = read_plot(path)
    check_histogram(image, [low, high], 40, markers=[0.5])
    # the same check fails on a blank canvas and on another distribution's plot
    with pytest.raises(AssertionError):
        check_histogram(np.full_like(image, 255), [low, high], 40, markers=[0.5])
    moved = plots.histogram_png({"PASS": low + 0.1, "defect": high}, tmp_path / "h2.png", "title", "x", bins=40,
                                markers={"cutoff": 0.5})
    other = read_plot(moved)
    assert not np.array_equal(image, other)
    check_histogram(other, [low + 0.1, high], 40, markers=[0.5])
    with pytest.raises(AssertionError):
        check_histogram(other, [low, high], 40, markers=[0.5])


def test_roc_png_draws_the_curve(tmp_path):
    fpr, tpr = np.array([0.0, 0.05, 0.2, 0.5, 1.0]), np.array([0.0, 0.7, 0.9, 0.97, 1.0])
    image = read_plot(plots.roc_png(fpr, tpr, tmp_path / "r.png", auc=0.93))
    assert curve_coverage(image, fpr, tpr, (0, 1), (0, 1.02), plots.color(0)) >= 0.95
    assert curve_coverage(image, fpr, fpr, (0, 1), (0, 1.02), plots.color(0)) < 0.3  # not the chance line
    assert curve_coverage(np.full_like(image, 255), fpr, tpr, (0, 1), (0, 1.02), plots.color(0)) == 0
    zoom = read_plot(plots.roc_png(fpr, tpr, tmp_path / "z.png", max_fpr=0.1))
    # the curve is cut at the window's edge: (0, 0) -> (0.05, 0.7) -> (0.1, 0.7)
    assert curve_coverage(zoom, [0.0, 0.05, 0.1], [0.0, 0.7, 0.7], (0, 0.1), (0, 1.02), plots.color(0)) >= 0.95


def test_plots_edge_cases(tmp_path):
    rng = np.random.default_rng(1)
    latency = rng.lognormal(0, 1, 50)
    image = read_plot(plots.histogram_png({"latency": latency}, tmp_path / "log.png", "t", "ms", log_x=True))
    check_histogram(image, [np.log10(latency)], 50)
    flat = read_plot(plots.histogram_png({"same": np.ones(5)}, tmp_path / "flat.png", "t", "x"))
    assert colour_mask(flat, plots.color(0)).any()
    with pytest.raises(InputError):
        plots.histogram_png({}, tmp_path / "e.png", "t", "x")
    with pytest.raises(InputError):
        plots.roc_png(np.zeros(3), np.zeros(2), tmp_path / "bad.png")
    assert plots.nice_ticks(0, 1, 6) == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
