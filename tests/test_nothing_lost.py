"""Issue 19: nothing of the user's is deleted or overwritten, every bad input is one error line.

Each test here was written against a case that lost a user's file or ended in a traceback.
"""

import os

import pytest

from changenet_trt import files
from changenet_trt.cli import main
from changenet_trt.data.dataset import LightLayout
from changenet_trt.errors import InputError
from changenet_trt.evaluation.evaluate import evaluate

from fakes.engine_files import opaque_engine
from helpers import write_set

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


# -- case 7: a Classifier used in a fork()ed child ------------------------------------------------
def run_forked(job, timeout_s=60):
    """Run ``job()`` in a fork()ed child; its return value (text) or None when it hung and was killed."""
    import signal
    import time

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        try:
            os.write(write_end, str(job()).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    deadline = time.monotonic() + timeout_s
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read_end)
            return None
        time.sleep(0.05)
    with os.fdopen(read_end) as handle:
        return handle.read()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX")
def test_a_classifier_predicting_on_paths_works_in_a_forked_child(reference_models, small_set):
    import warnings

    import changenet_trt

    folder = os.path.join(os.path.dirname(small_set), "golden")
    paths = [os.path.join(folder, name) for name in sorted(os.listdir(folder))]
    with changenet_trt.load(reference_models["learnable_dynamic"]) as clf:
        parent = clf.predict(paths, paths)  # starts the decode threads and the runner's worker
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # "multi-threaded process, fork()"
            child = run_forked(lambda: ",".join("{:.6f}".format(s) for s in clf.predict(paths, paths).scores))
    assert child is not None, "the child hung"
    assert child == ",".join("{:.6f}".format(s) for s in parent.scores)


# -- case 2: an image header declaring 100000x100000 pixels --------------------------------------
def png_declaring(width, height):
    """A 370-byte-ish PNG whose header declares ``width x height`` RGB pixels (chunks with valid CRCs)."""
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 300))
            + chunk(b"IEND", b""))


def test_an_image_declaring_too_many_pixels_is_one_skipped_row(tmp_path, small_set, reference_models, capsys):
    bomb = os.path.join(os.path.dirname(small_set), "sample", "b.png")
    with open(bomb, "wb") as handle:
        handle.write(png_declaring(100000, 100000))
    capsys.readouterr()
    code = main(["eval", reference_models["learnable_dynamic"], "--csv", small_set, "--lights", "none", "--ext",
                 ".png", "--no-plots", "--out", str(tmp_path / "r")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "CV_IO_MAX_IMAGE_PIXELS" in err and "b.png" in err and "Traceback" not in err
    import json

    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["pairs"] == 3 and summary["skipped"] == 1
    assert "CV_IO_MAX_IMAGE_PIXELS" in summary["skipped_rows"][0]["reason"]


def test_a_huge_light_is_resized_without_a_float_copy_of_it(tmp_path):
    import tracemalloc

    import cv2
    import numpy as np

    from changenet_trt.data.preprocess import write_normalized

    rng = np.random.default_rng(3)
    light = rng.integers(0, 256, (3000, 2500, 3), dtype=np.uint8)
    dst = np.empty((3, 128, 128), np.float32)
    tracemalloc.start()
    write_normalized(dst, light, "tao")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < light.nbytes // 4, peak  # a float32 copy of the light would be 4x its bytes
    reference = cv2.resize(light.astype(np.float32), (128, 128), interpolation=cv2.INTER_LINEAR)
    rgb = reference[:, :, ::-1]
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(dst, ((rgb / 255.0 - mean) / std).transpose(2, 0, 1), atol=1e-5)


# -- also seen: --workers 5000 ----------------------------------------------------------------------
def test_decode_threads_are_bounded_and_reported_as_run(small_set):
    from changenet_trt.data import preprocess
    from changenet_trt.data.dataset import PairLoader, load_dataset

    dataset = load_dataset(small_set, layout=SINGLE)
    with PairLoader(dataset.pairs, SINGLE, (3, 512, 128), workers=5000) as loader:
        assert 1 <= loader.workers <= preprocess.MAX_WORKERS
        assert loader.workers <= 4 * (os.cpu_count() or 1)


# -- cases 4, 5, 8: triton-repo names, tampered sidecars, folder modes ----------------------------
def triton_engine(tmp_path):
    return opaque_engine(tmp_path)


@pytest.mark.parametrize("name", ["x" * 300, "my model", "modèle", "x#y", "a?b", "a%20b", ".hidden", "-opt", "a/b",
                                  ""])
def test_triton_model_names_are_what_triton_serves(tmp_path, reference_models, capsys, name):
    capsys.readouterr()
    code = main(["triton-repo", reference_models["euclidean_dynamic"], "-o", str(tmp_path / "repo"),
                 "--name=" + name])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "Triton model name" in err, err
    assert not (tmp_path / "repo").exists() or os.listdir(str(tmp_path / "repo")) == []


def test_triton_model_names_triton_serves_are_taken(tmp_path, reference_models, capsys):
    for name in ("changenet", "cn_v2.1", "A-1", "x" * 200):
        assert main(["triton-repo", reference_models["euclidean_dynamic"], "-o", str(tmp_path / "repo"),
                     "--name", name]) == 0, capsys.readouterr().err


def test_triton_model_folder_gets_the_umask_mode(tmp_path, reference_models):
    from changenet_trt.engine.triton_repo import write_model_repository

    old = os.umask(0o022)
    try:
        report = write_model_repository(reference_models["euclidean_dynamic"], str(tmp_path / "repo"), name="cn",
                                        platform="onnxruntime_onnx")
    finally:
        os.umask(old)
    for root, _, names in os.walk(report.model_dir):
        assert os.stat(root).st_mode & 0o777 == 0o755, root
        for name in names:
            assert os.stat(os.path.join(root, name)).st_mode & 0o777 == 0o644, name


@pytest.mark.parametrize("tamper", [
    lambda meta: meta["profile"].update(max="lots"),
    lambda meta: meta["tensors"][0].update(shape="x"),
    lambda meta: meta["tensors"][1].pop("name"),
    lambda meta: meta.update(tensors="abc"),
    lambda meta: meta.update(profile={"min": 8, "opt": 4, "max": 2}),
    lambda meta: meta.update(schema="new"),
    lambda meta: meta.update(trt_version=10),
], ids=["profile-max", "shape", "nameless", "tensors-text", "profile-order", "schema", "version-number"])
def test_triton_repo_refuses_a_tampered_sidecar_in_one_line(tmp_path, capsys, tamper):
    import json

    engine = triton_engine(tmp_path)
    with open(engine + ".json") as handle:
        meta = json.load(handle)
    tamper(meta)
    with open(engine + ".json", "w") as handle:
        json.dump(meta, handle)
    capsys.readouterr()
    code = main(["triton-repo", engine, "-o", str(tmp_path / "repo"), "--platform", "tensorrt_plan"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "metadata" in err, err
    assert os.listdir(str(tmp_path / "repo")) == []


def test_triton_repo_refuses_an_engine_its_sidecar_does_not_describe(tmp_path, capsys):
    import json

    from changenet_trt.files import file_sha256

    engine = triton_engine(tmp_path)
    with open(engine + ".json") as handle:
        meta = json.load(handle)
    meta["engine_sha256"] = file_sha256(engine)
    with open(engine + ".json", "w") as handle:
        json.dump(meta, handle)
    assert main(["triton-repo", engine, "-o", str(tmp_path / "ok"), "--platform", "tensorrt_plan"]) == 0
    with open(engine, "ab") as handle:
        handle.write(b"swapped")
    capsys.readouterr()
    code = main(["triton-repo", engine, "-o", str(tmp_path / "repo"), "--platform", "tensorrt_plan"])
    err = capsys.readouterr().err
    assert code == 2 and "sha256" in err and err.count("\n") == 1, err
    assert os.listdir(str(tmp_path / "repo")) == []


# -- case 3: a full disk ----------------------------------------------------------------------------
def full_disk(monkeypatch):
    import errno

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)


def test_a_full_disk_is_one_error_line_and_leaves_nothing(tmp_path, small_set, reference_models, monkeypatch, capsys):
    out = tmp_path / "out"
    assert run_eval(reference_models["learnable_dynamic"], small_set, out, capsys)[0] == 0
    before = {name: (out / name).read_bytes() for name in os.listdir(str(out))}
    full_disk(monkeypatch)
    commands = {
        "eval": ["eval", reference_models["learnable_dynamic"], "--csv", small_set, "--lights", "none", "--ext",
                 ".png", "--quiet", "--no-plots", "--out", str(out)],
        "reference-model": ["reference-model", str(tmp_path / "m.onnx")],
    }
    for name, argv in commands.items():
        capsys.readouterr()
        code = main(argv)
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if not line.startswith("warning: ")]
        assert code == 2 and len(errors) == 1 and errors[0].startswith("error: cannot write "), (name, err)
        assert "No space left on device" in err
    assert {name: (out / name).read_bytes() for name in os.listdir(str(out))} == before
    assert sorted(os.listdir(str(tmp_path))) == ["out", "set"]


def test_a_name_too_long_for_the_file_system_is_one_error_line(tmp_path, reference_models, capsys):
    capsys.readouterr()
    code = main(["reference-model", str(tmp_path / ("m" * 300 + ".onnx"))])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "too long" in err, err
    assert os.listdir(str(tmp_path)) == []


# -- case 10: normalisation values ----------------------------------------------------------------
@pytest.mark.parametrize("text", ["0.5,0.5,0.5/1e999,1,1", "nan,0.5,0.5/0.5,0.5,0.5", "0.5,inf,0.5/0.5,0.5,0.5",
                                  "0.5,0.5,0.5/0,0.5,0.5", "0.5,0.5,0.5/-1,0.5,0.5", "0.5,0.5,0.5/nan,1,1"])
def test_normalisation_must_be_finite_with_positive_std(tmp_path, small_set, reference_models, capsys, text):
    from changenet_trt.data.preprocess import Normalization

    code, err = run_eval(reference_models["learnable_dynamic"], small_set, tmp_path / "r", capsys,
                         "--normalization", text)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "finite" in err, err
    assert not (tmp_path / "r").exists()
    mean, std = text.split("/")
    with pytest.raises(InputError, match="finite"):
        Normalization(tuple(float(v) for v in mean.split(",")), tuple(float(v) for v in std.split(",")))


# -- also seen: install hints per module ------------------------------------------------------------
def test_each_missing_module_gets_its_own_install_hint():
    from changenet_trt.errors import missing_dependency

    triton = str(missing_dependency("tritonclient", "the Triton backend"))
    assert "changenet-trt[triton]" in triton and "JetPack" not in triton and "pycuda" not in triton
    ort = str(missing_dependency("onnxruntime", "fp16-check"))
    assert "pip install onnxruntime" in ort and "JetPack" not in ort
    trt = str(missing_dependency("tensorrt", "build"))
    assert "JetPack" in trt and "changenet-trt[tensorrt]" in trt
    assert "pip install some-module" in str(missing_dependency("some_module", "x"))


# -- also seen: one JSON-report writer, its path checked before the work ------------------------------
def test_every_json_report_is_checked_first_and_written_by_one_writer(tmp_path, reference_models, monkeypatch,
                                                                      capsys):
    from changenet_trt import files as files_module
    from changenet_trt.tools import bench, doctor

    worked = []
    monkeypatch.setattr(doctor, "run_doctor", lambda *a, **k: worked.append("doctor"))
    monkeypatch.setattr(bench, "run_benchmark", lambda *a, **k: worked.append("bench"))
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    under_file = str(a_file / "r.json")
    model = reference_models["learnable_dynamic"]
    for argv in (["doctor", "--cpu-only", "--json", under_file], ["bench", model, "--json", under_file],
                 ["bench", model, "--exportTimes", under_file], ["bench", model, "--json", model]):
        capsys.readouterr()
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, (argv, err)
    assert worked == [] and a_file.read_text() == "x"

    written = []
    original = files_module.write_json_report
    monkeypatch.setattr(doctor, "write_json_report", lambda *a, **k: written.append(1) or original(*a, **k))
    path = doctor.write_json(doctor.DoctorReport([("python", "3")], []), str(tmp_path / "new" / "doctor.json"))
    assert open(path).read().startswith("{") and written == [1]
    assert sorted(os.listdir(str(tmp_path / "new"))) == ["doctor.json"]  # written whole, no temporary left


# -- also seen: a stray quote in a long CSV ------------------------------------------------------------
def test_a_stray_quote_names_its_line(tmp_path):
    from changenet_trt.data.dataset import load_dataset
    from changenet_trt.errors import DatasetError

    rows = ["input_path,golden_path,label,object_name"]
    rows += ["sample,golden,PASS,o{}".format(i) for i in range(5000)]
    rows[1234] = 'sample,golden,PASS,"o1233'  # line 1235
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DatasetError, match=r"line 1235: a quote opens a field that runs on to line 5001"):
        load_dataset(str(tmp_path / "data.csv"), layout=SINGLE, check_files=False)


# -- also seen: labels that look like PASS, a cutoff of True, outputs that are not scores ---------
def test_labels_that_only_look_like_pass_are_warned(tmp_path):
    from changenet_trt.data.dataset import load_dataset

    rows = ["input_path,golden_path,label,object_name", "s,g,PASS,a", "s,g,\uff30\uff21\uff33\uff33,b",
            "s,g,PASS\u200b,c", "s,g,\ufeffPASS,d", "s,g,MISSING,e"]
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    warned = []
    dataset = load_dataset(str(tmp_path / "data.csv"), layout=SINGLE, check_files=False, on_warning=warned.append)
    assert dataset.is_defect.tolist() == [False, True, True, True, True]  # as TAO reads them
    assert len(warned) == 1
    for label in ("\uff30\uff21\uff33\uff33", "PASS\u200b", "\ufeffPASS"):
        assert repr(label) in warned[0]
    assert "MISSING" not in warned[0]


@pytest.mark.parametrize("cutoff", [True, False, "0.5", None.__class__])
def test_a_cutoff_must_be_a_number(reference_models, cutoff):
    import changenet_trt

    with pytest.raises(InputError, match="cutoff must be a number"):
        changenet_trt.load(reference_models["learnable_dynamic"], cutoff=cutoff)


def model_with(tmp_path, output_type=None, cutoff=None):
    import onnx
    from onnx import TensorProto, helper

    from changenet_trt.contract import META_CUTOFF

    shape = ["batch", 3, 16, 16]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("input_1", "input_2")]
    nodes = [helper.make_node("Sub", ["input_1", "input_2"], ["d"]),
             helper.make_node("ReduceSumSquare", ["d"], ["s"], axes=[1, 2, 3], keepdims=0)]
    out_type = TensorProto.FLOAT
    if output_type is not None:
        nodes.append(helper.make_node("Cast", ["s"], ["output"], to=output_type))
        out_type = output_type
    else:
        nodes.append(helper.make_node("Identity", ["s"], ["output"]))
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("output", out_type, ["batch"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    if cutoff is not None:
        helper.set_model_props(model, {META_CUTOFF: cutoff})
    path = str(tmp_path / "m.onnx")
    onnx.save(model, path)
    return path


def test_an_integer_output_is_not_a_score(tmp_path, capsys):
    from onnx import TensorProto

    path = model_with(tmp_path, output_type=TensorProto.INT64)
    capsys.readouterr()
    assert main(["inspect", path]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "int64" in err and err.count("\n") == 1, err


def test_a_metadata_cutoff_that_is_no_number_is_warned_and_not_used(tmp_path, caplog):
    import changenet_trt
    from changenet_trt.contract import DEFAULT_CUTOFF

    path = model_with(tmp_path, cutoff="high")
    with caplog.at_level("WARNING"):
        with changenet_trt.load(path) as clf:
            assert clf.cutoff == DEFAULT_CUTOFF
    assert any("'high'" in r.getMessage() and "not a finite number" in r.getMessage() for r in caplog.records)


# -- case 6: ONNX external data outside the model folder, or beyond its file ---------------------
def external_data_model(tmp_path, location, length):
    import numpy as np
    import onnx
    from onnx import TensorProto

    path = model_with(tmp_path)
    model = onnx.load(path)
    weight = onnx.helper.make_tensor("w", TensorProto.FLOAT, [1], [1.0])
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    model.graph.initializer.append(weight)
    model.graph.node[0].input[1] = "input_2"  # the weight is only carried, never needed to run
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "outside.bin").write_bytes(np.ones(1, np.float32).tobytes())
    (folder / "w.bin").write_bytes(np.ones(1, np.float32).tobytes())
    onnx.save(model, str(folder / "m.onnx"))
    return str(folder / "m.onnx")


@pytest.mark.parametrize("location,length,words", [("../outside.bin", 4, "outside the model's folder"),
                                                    (os.sep + "etc" + os.sep + "hostname", 4, "outside"),
                                                    ("w.bin", 4 << 30, "bytes 0..4294967296 of a 4-byte file"),
                                                    ("gone.bin", 4, "does not exist")])
def test_onnx_external_data_is_checked_before_use(tmp_path, small_set, capsys, location, length, words):
    model = external_data_model(tmp_path, location, length)
    for argv in (["eval", model, "--csv", small_set, "--lights", "none", "--ext", ".png", "--out",
                  str(tmp_path / "r")], ["build", model, "--dry-run"]):
        capsys.readouterr()
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and words in err, (argv, err)
    assert not (tmp_path / "r").exists()


def test_eval_out_holding_an_image_of_a_set_aside_row_is_refused(tmp_path, reference_models):
    """A row whose sample is missing is skipped, but its golden image still lies where it lies."""
    root = tmp_path / "data"
    csv_path = write_set(str(root), [("a", "PASS", 100, 101)])
    (root / "others").mkdir()
    (root / "others" / "b.png").write_bytes((root / "golden" / "a.png").read_bytes())
    with open(csv_path, "a") as handle:
        handle.write("gone,others,PASS,b\n")  # sample missing: set aside, golden in data/others
    with pytest.raises(InputError, match="holds the input"):
        evaluate(reference_models["learnable_dynamic"], csv_path, images_dir=str(root), out_dir=str(root / "others"),
                 layout=SINGLE, progress=False, plots=False)
    assert os.listdir(str(root / "others")) == ["b.png"]
