"""TAO Deploy as an oracle: its own Visual ChangeNet-Classification loader, inferencer and
``evaluate``/``inference`` scripts run on data sets and models made here, and this project's
tensors, scores, counts and TAO log line must equal theirs.

Needs the venv ``make test-tao-deploy`` installs (``.venv-tao-deploy``: nvidia-tao-deploy 7.3.0
in the venv and 7.1.0 under ``tao-deploy-7.1.0/``, without their heavy dependencies); TensorRT,
pycuda and nvidia-tao-core are replaced by the stand-ins in ``tests/tao_deploy/stand_ins`` (the
"engine" TAO loads is the ONNX model, run with ONNX Runtime). Skipped, with the reason, without
that venv, unless CHANGENET_REQUIRE_TAO_DEPLOY=1 (``make test-tao-deploy``) makes that a failure.
"""

import csv
import json
import os
import subprocess

import cv2
import numpy as np
import onnx
import pytest

from changenet_trt.cli import main
from changenet_trt.data.dataset import LightLayout, PairLoader, load_dataset
from changenet_trt.data.synth import synthesize

from helpers import REPO_ROOT, TAO_CLASSIFY_SPEC

pytestmark = pytest.mark.tao_deploy

VENV = os.environ.get("CHANGENET_TAO_DEPLOY_VENV", os.path.join(REPO_ROOT, ".venv-tao-deploy"))
PYTHON = os.path.join(VENV, "bin", "python")
STAND_INS = os.path.join(REPO_ROOT, "tests", "tao_deploy", "stand_ins")
DRIVER = os.path.join(REPO_ROOT, "tests", "tao_deploy", "run_tao.py")
RELEASES = {"7.3.0": None, "7.1.0": os.path.join(VENV, "tao-deploy-7.1.0")}
TAO_LIGHTS = ("LowAngleLight", "SolderLight", "UniformLight", "WhiteLight")
PNG = LightLayout(ext=".png")


def _unavailable():
    reason = None
    if not os.path.exists(PYTHON):
        reason = "no TAO Deploy venv at {} (make test-tao-deploy installs it)".format(VENV)
    elif os.path.exists(os.path.join(VENV, ".unavailable")):
        with open(os.path.join(VENV, ".unavailable")) as handle:
            reason = handle.read().strip()
    elif not os.path.isdir(RELEASES["7.1.0"]):
        reason = "TAO Deploy 7.1.0 is not installed under {}".format(RELEASES["7.1.0"])
    return reason


REASON = _unavailable()
if REASON and os.environ.get("CHANGENET_REQUIRE_TAO_DEPLOY") == "1":
    raise RuntimeError("the TAO Deploy oracle tier cannot run: " + REASON)
if REASON:
    pytest.skip(REASON, allow_module_level=True)


def run_tao(args, release="7.3.0"):
    """TAO's code through tests/tao_deploy/run_tao.py in the oracle venv; its output (the log)."""
    path = [STAND_INS] + ([RELEASES[release]] if RELEASES[release] else [])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path), HYDRA_FULL_ERROR="1")
    done = subprocess.run([PYTHON, DRIVER] + [str(a) for a in args], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:]
    return done.stdout


def tao_line(log):
    lines = [line for line in log.splitlines() if line.startswith("Tot Comp ")]
    assert len(lines) == 1, log[-3000:]
    return lines[0]


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def write_rows(path, rows):
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)


def rename_object(root, old, new, ext):
    for side in ("inspect", "golden"):
        for folder, _, names in os.walk(os.path.join(root, "images", side)):
            for name in names:
                if name.startswith(old + "_"):
                    os.rename(os.path.join(folder, name), os.path.join(folder, new + name[len(old):]))


def make_set(root, ext, pairs, seed, lights=TAO_LIGHTS):
    """A synthetic TAO data set with a board id before TAO's columns and the component after, and
    object names that look numeric ('0012', '107': text, mixed with letters as AOI CSVs are)."""
    result = synthesize(root, pairs=pairs, defect_rate=0.4, seed=seed, ext=ext, lights=lights)
    rows = read_rows(result.csv_path)
    header = rows[0]
    at = header.index("object_name")
    renames = {rows[1][at]: "0012", rows[3][at]: "107"}
    for old, new in renames.items():
        rename_object(root, old, new, ext)
    out = [["board_id"] + header]
    for k, row in enumerate(rows[1:]):
        row[at] = renames.get(row[at], row[at])
        out.append(["B{:03d}".format(k)] + row)
    write_rows(result.csv_path, out)
    return result.csv_path


def write_spec(path, root, csv_path, model, kind, margin, ext, infer_csv=None, replace=()):
    """TAO's shipped classification spec, pointed at this data set and model."""
    text = TAO_CLASSIFY_SPEC.format(root=root)
    text = text.replace("{}/dataset.csv".format(root), csv_path).replace(
        "{}/line.csv".format(root), infer_csv or csv_path)
    text = text.replace('"${results_dir}/gen_trt_engine/changenet-classify.trt"', model)
    text = text.replace("eval_margin: 0.005", "eval_margin: {!r}".format(margin))
    text = text.replace("difference_module: 'euclidean'", "difference_module: '{}'".format(kind))
    text = text.replace("image_ext: .jpg", "image_ext: {}".format(ext))
    for old, new in replace:
        assert old in text, old
        text = text.replace(old, new)
    with open(str(path), "w") as handle:
        handle.write(text)
    return str(path)


def bare_model(src, dst):
    """The model without its recommended cutoff (as TAO exports it), so the spec's eval_margin decides."""
    model = onnx.load(src)
    del model.metadata_props[:]
    onnx.save(model, dst)
    return dst


@pytest.fixture(scope="module")
def oracle_sets(tmp_path_factory, reference_models):
    out = {}
    for ext, kind, source, seed, margin in ((".jpg", "learnable", "learnable_static16", 31, 0.5),
                                            (".png", "euclidean", "euclidean_dynamic", 32, 0.045)):
        root = str(tmp_path_factory.mktemp("oracle" + ext.strip(".")))
        csv_path = make_set(root, ext, pairs=36, seed=seed)
        # the reference models separate these pairs: two wrong labels give one FP and one FN, so
        # every one of TAO's definitions counts something
        rows = read_rows(csv_path)
        label = rows[0].index("label")
        good = next(k for k, r in enumerate(rows) if k and r[label] == "PASS")
        bad = next(k for k, r in enumerate(rows) if k and r[label] != "PASS")
        rows[good][label], rows[bad][label] = "SCRATCH", "PASS"
        write_rows(csv_path, rows)
        model = bare_model(reference_models[source], os.path.join(root, "model.onnx"))
        out[ext] = {"root": root, "csv": csv_path, "model": model, "kind": kind, "ext": ext, "margin": margin}
    return out


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_input_tensors_equal_tao_loader(tmp_path, oracle_sets, ext):
    data = oracle_sets[ext]
    spec = write_spec(tmp_path / "spec.yaml", data["root"], data["csv"], data["model"], data["kind"], 0.5, ext)
    run_tao(["tensors", spec, "evaluate", tmp_path / "tao.npz"])
    tao = np.load(tmp_path / "tao.npz")
    assert "error" not in tao.files, str(tao["error"])
    dataset = load_dataset(data["csv"], layout=LightLayout(ext=ext))
    golden = np.zeros((len(dataset), 3, 512, 128), np.float32)
    sample = np.zeros_like(golden)
    with PairLoader(dataset.pairs, dataset.layout, (3, 512, 128), "tao") as loader:
        loader.fill(golden, sample, 0, len(dataset))
    assert tao["input_1"].shape == sample.shape  # input_1 is the sample (TAO's unit image)
    assert np.abs(tao["input_1"] - sample).max() <= 1e-6
    assert np.abs(tao["input_2"] - golden).max() <= 1e-6
    assert (tao["labels"].ravel() == dataset.is_defect).all()


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_eval_report_equals_tao_deploy_evaluate(tmp_path, oracle_sets, ext, capsys):
    data = oracle_sets[ext]
    margin = data["margin"]
    spec = write_spec(tmp_path / "spec.yaml", data["root"], data["csv"], data["model"], data["kind"], margin, ext)
    logs = {release: run_tao(["evaluate", spec, tmp_path / release], release=release) for release in RELEASES}
    tao_scores = np.load(tmp_path / "7.3.0" / "scores.npy").ravel()

    assert main(["eval", data["model"], "--spec", spec, "--out", str(tmp_path / "ours"), "--no-plots",
                 "--quiet"]) == 0
    report = capsys.readouterr().out
    summary = json.loads((tmp_path / "ours" / "summary.json").read_text())
    assert summary["cutoff"] == margin and summary["pairs"] == 36
    assert summary["fp"] > 0 and summary["fn"] > 0  # every definition counts something
    # the TAO line of the report, character for character
    assert summary["tao"]["line"] == tao_line(logs["7.3.0"])
    assert "TAO        " + tao_line(logs["7.3.0"]) in report
    # TAO Deploy 7.1.0's line: the <= 7.1 definitions (FP and FN over all pairs)
    assert summary["tao_7_1"]["line"] == tao_line(logs["7.1.0"])
    assert tao_line(logs["7.1.0"]) != tao_line(logs["7.3.0"])
    # the scores, in CSV order
    rows = read_rows(tmp_path / "ours" / "scores.csv")
    ours = np.array([float(r[rows[0].index("score")]) for r in rows[1:]])
    assert tao_scores.shape == ours.shape
    assert np.abs(tao_scores - ours).max() <= 1e-6
    # TAO's evaluate.csv keeps every input column; ours carries the extra ones
    tao_rows = read_rows(tmp_path / "7.3.0" / "trt_evaluate" / "evaluate.csv")
    assert tao_rows[0][:-1] == read_rows(data["csv"])[0] and tao_rows[0][-1] == "output_score"
    assert rows[0][-2:] == ["board_id", "component"]
    assert [r[-2:] for r in rows[1:]] == [[r[0], r[-2]] for r in tao_rows[1:]]


def test_infer_csv_equals_tao_deploy_inference(tmp_path, oracle_sets, capsys):
    data = oracle_sets[".jpg"]
    rows = read_rows(data["csv"])
    label = rows[0].index("label")
    line_csv = str(tmp_path / "line.csv")
    write_rows(line_csv, [[v for i, v in enumerate(r) if i != label] for r in rows])
    spec = write_spec(tmp_path / "spec.yaml", data["root"], data["csv"], data["model"], data["kind"], 0.5, ".jpg",
                      infer_csv=line_csv)
    run_tao(["inference", spec, tmp_path / "tao"])
    tao_scores = np.load(tmp_path / "tao" / "scores.npy").ravel()
    assert main(["infer", data["model"], "--spec", spec, "--out", str(tmp_path / "ours.csv"), "--quiet"]) == 0
    capsys.readouterr()
    ours = read_rows(tmp_path / "ours.csv")
    assert ours[0] == read_rows(line_csv)[0] + ["score", "decision"]
    assert [r[:-2] for r in ours[1:]] == read_rows(line_csv)[1:]
    assert np.abs(np.array([float(r[-2]) for r in ours[1:]]) - tao_scores).max() <= 1e-6
    tao_rows = read_rows(tmp_path / "tao" / "trt_inference" / "inference.csv")
    assert tao_rows[0] == read_rows(line_csv)[0] + ["output_score"]
    assert [r[3] for r in tao_rows[1:]] == [r[3] for r in ours[1:]]  # object names, '0012' kept by both


# -- where TAO Deploy is wrong: its behaviour, and ours -------------------------------------------------
def loader_result(folder, root, csv_path, ext, replace=()):
    """TAO's loader on the data set: its tensors and labels, or the error it stopped with."""
    os.makedirs(str(folder), exist_ok=True)
    spec = write_spec(folder / "spec.yaml", root, csv_path, "unused.onnx", "learnable", 0.5, ext, replace=replace)
    run_tao(["tensors", spec, "evaluate", folder / "tao.npz"])
    return np.load(folder / "tao.npz")


def test_tao_grid_2x3_repeats_light_2_and_drops_light_5(tmp_path):
    lights = ("L0", "L1", "L2", "L3", "L4", "L5")
    root = tmp_path / "six"
    rng = np.random.default_rng(0)
    rows = [["input_path", "golden_path", "label", "object_name"]]
    for name in ("A1", "A2"):
        for side in ("inspect", "golden"):
            os.makedirs(str(root / side), exist_ok=True)
            for light in lights:  # every light its own noise, so each tile is recognisable
                cv2.imwrite(str(root / side / "{}_{}.png".format(name, light)),
                            rng.integers(0, 256, (128, 128, 3), dtype=np.uint8))
        rows.append(["inspect", "golden", "PASS", name])
    csv_path = str(root / "dataset.csv")
    write_rows(csv_path, rows)
    tao = loader_result(tmp_path / "tao", str(root), csv_path, ".png", replace=[
        ("num_input: 4", "num_input: 6"), ("concat_type: linear", "concat_type: grid"),
        ("x: 2\n      y: 2", "x: 2\n      y: 3"),
        ("      WhiteLight: 3\n", "      WhiteLight: 3\n      L4: 4\n      L5: 5\n")] + [
        ("{}: {}".format(name, k), "L{}: {}".format(k, k)) for k, name in enumerate(TAO_LIGHTS)])
    assert "error" not in tao.files, str(tao["error"])
    dataset = load_dataset(csv_path, layout=LightLayout(lights=lights, ext=".png", concat="grid", grid=(2, 3)))
    golden = np.zeros((len(dataset), 3, 256, 384), np.float32)
    sample = np.zeros_like(golden)
    with PairLoader(dataset.pairs, dataset.layout, (3, 256, 384), "tao") as loader:
        loader.fill(golden, sample, 0, len(dataset))

    def tile(x, row, col):
        return x[0, :, row * 128:(row + 1) * 128, col * 128:(col + 1) * 128]

    def same(a, b):
        return np.abs(a - b).max() <= 1e-6

    theirs = tao["input_1"]
    # TAO puts light idx*x+idy in cell (idx, idy): lights 0 1 2 / 2 3 4, light 5 nowhere
    for cell, light in zip([(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)], [0, 1, 2, 2, 3, 4]):
        assert same(tile(theirs, *cell), tile(sample, light // 3, light % 3)), (cell, light)
    assert not any(same(tile(theirs, r, c), tile(sample, 1, 2)) for r in range(2) for c in range(3))
    # here the grid is row-major: light k in row k // 3, column k % 3, each light once
    assert all(not same(tile(sample, *a), tile(sample, *b)) for a in [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
               for b in [(1, 2)])


def test_tao_fails_on_non_square_tiles_and_grayscale_jpegs(tmp_path, oracle_sets):
    data = oracle_sets[".jpg"]
    # non-square tiles: 4 lights of 128x64 (HxW) stacked along H make a 512x64 input
    tao = loader_result(tmp_path / "tall", data["root"], data["csv"], ".jpg",
                        replace=[("image_width: 128", "image_width: 64")])
    assert "error" in tao.files and "ValueError" in str(tao["error"])  # cv2.resize's dsize is (width, height)
    dataset = load_dataset(data["csv"])
    golden = np.zeros((2, 3, 512, 64), np.float32)
    sample = np.zeros_like(golden)
    with PairLoader(dataset.pairs[:2], dataset.layout, (3, 512, 64), "tao") as loader:
        loader.fill(golden, sample, 0, 2)
        assert not loader.failed
    # a grayscale JPEG light
    root = str(tmp_path / "gray")
    csv_path = make_set(root, ".jpg", pairs=4, seed=4)
    first = load_dataset(csv_path).pairs[0].sample_files[0]
    cv2.imwrite(first, cv2.cvtColor(cv2.imread(first), cv2.COLOR_BGR2GRAY))
    tao = loader_result(tmp_path / "gray_tao", root, csv_path, ".jpg")
    assert "error" in tao.files, "TAO's loader read a grayscale JPEG"
    dataset = load_dataset(csv_path)
    with PairLoader(dataset.pairs, dataset.layout, (3, 512, 128), "tao") as loader:
        loader.fill(np.zeros((4, 3, 512, 128), np.float32), np.zeros((4, 3, 512, 128), np.float32), 0, 4)
        assert not loader.failed


def test_tao_counts_a_spaced_pass_as_a_defect_and_fails_on_all_numeric_names(tmp_path):
    root = str(tmp_path / "spaced")
    csv_path = make_set(root, ".png", pairs=4, seed=6)
    rows = read_rows(csv_path)
    label = rows[0].index("label")
    passes = [k for k, r in enumerate(rows) if k and r[label] == "PASS"]
    rows[passes[0]][label] = " PASS"
    write_rows(csv_path, rows)
    tao = loader_result(tmp_path / "spaced_tao", root, csv_path, ".png")
    assert tao["labels"].ravel()[passes[0] - 1] == 1  # ' PASS' != 'PASS' for TAO
    assert not load_dataset(csv_path, layout=PNG).pairs[passes[0] - 1].is_defect  # a good part here
    # every object name numeric: pandas makes them integers and TAO's os.path.join fails
    at = rows[0].index("object_name")
    for k, row in enumerate(rows[1:]):
        rename_object(root, row[at], str(100 + k), ".png")
        row[at] = str(100 + k)
    rows[passes[0]][label] = "PASS"
    write_rows(csv_path, rows)
    tao = loader_result(tmp_path / "numeric_tao", root, csv_path, ".png")
    assert "error" in tao.files and "TypeError" in str(tao["error"])
    assert [p.object_name for p in load_dataset(csv_path, layout=PNG).pairs] == [str(100 + k) for k in range(4)]
