"""Messages that must not mislead: rows by their first line, quiet runs, decoder faults named,
missing files explained, runs that are probably not what the user meant, and model files."""

import io
import os

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import changenet_trt
from changenet_trt.cli import main
from changenet_trt.data.dataset import LightLayout, PairLoader, layout_warning, load_dataset
from changenet_trt.data.preprocess import check_complete, decode_image
from changenet_trt.errors import DatasetError, EngineError, InputError, ModelContractError
from changenet_trt.evaluation.evaluate import evaluate, format_summary

HEADER = "input_path,golden_path,label,object_name\n"
ONE_IMAGE = LightLayout(lights=(), ext=".png")


def write_images(root, names, ext=".png", folders=("golden", "sample"), size=16):
    for name in names:
        for k, folder in enumerate(folders):
            os.makedirs(os.path.join(root, folder), exist_ok=True)
            image = np.full((size, size, 3), 60 + 40 * k + len(name), np.uint8)
            assert cv2.imwrite(os.path.join(root, folder, name + ext), image)


def write_csv(path, rows, header=HEADER):
    with open(str(path), "w", newline="") as handle:
        handle.write(header + "".join(rows))
    return str(path)


@pytest.fixture
def rng():
    return np.random.default_rng(12)


def jpeg_bytes(rng, size=64):
    ok, data = cv2.imencode(".jpg", rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    assert ok
    return data.tobytes()


def png_bytes(rng, size=64):
    ok, data = cv2.imencode(".png", rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    assert ok
    return data.tobytes()


# -- 1. a CSV record over several lines is reported by its first line -----------------------------
def test_a_record_spanning_lines_is_reported_by_its_first_line(tmp_path):
    write_images(str(tmp_path), ["a", "c"])
    csv_path = write_csv(tmp_path / "d.csv", [
        "sample,golden,PASS,a\n",
        'sample,golden,"MISSING\nsecond line",b\n',  # lines 3-4, its files are missing
        "\n",
        'sample,golden,PASS,c,"a note\nover\nthree lines"\n',  # lines 6-8
        "sample,golden,PASS,d\n",  # line 9, missing
    ])
    data = load_dataset(csv_path, tmp_path, ONE_IMAGE)
    assert [p.line for p in data.pairs] == [2, 6]
    assert [p.line for p in data.problems] == [3, 9]


# -- 2. --quiet hides every per-row line, the summary still counts them ----------------------------
@pytest.fixture
def set_with_problems(tmp_path):
    """Four rows: a missing file (line 3), a truncated JPEG (line 4), two good pairs."""
    root = str(tmp_path / "set")
    write_images(root, ["a", "c", "d"], ext=".jpg")
    path = os.path.join(root, "sample", "c.jpg")
    with open(path, "rb") as handle:
        data = handle.read()
    with open(path, "wb") as handle:
        handle.write(data[: len(data) // 2])
    return write_csv(os.path.join(root, "d.csv"), ["sample,golden,PASS,a\n", "sample,golden,PASS,b\n",
                                                   "sample,golden,MISSING,c\n", "sample,golden,PASS,d\n"])


@pytest.mark.parametrize("progress", [True, False])
def test_quiet_hides_every_row_problem_and_the_summary_counts_them(set_with_problems, reference_models, progress,
                                                                   capfd):
    log = io.StringIO()
    result = evaluate(reference_models["learnable_dynamic"], set_with_problems, out_dir=None,
                      layout=LightLayout(lights=(), ext=".jpg"), progress=progress, log=log)
    lines = [line for line in log.getvalue().splitlines() if "row skipped" in line]
    if progress:
        assert len(lines) == 2
        assert any("line 3" in line and "missing file" in line for line in lines)
        assert any("line 4" in line and "truncated JPEG" in line and "c.jpg" in line for line in lines)
    else:
        assert lines == []
    assert result.summary["skipped"] == 2 and result.summary["pairs"] == 2
    assert "2 skipped" in format_summary(result) and "skipped    2 row(s):" in format_summary(result)
    assert "Premature end" not in capfd.readouterr().err  # the truncated JPEG never reached libjpeg


def test_cli_quiet_shows_no_row_but_the_final_count(set_with_problems, reference_models, tmp_path, capsys):
    code = main(["eval", reference_models["learnable_dynamic"], "--csv", set_with_problems, "--lights", "none",
                 "--out", str(tmp_path / "out"), "--quiet"])
    out = capsys.readouterr()
    assert code == 0
    assert "row skipped" not in out.err
    assert "2 scored, 2 skipped" in out.out


# -- 3. decoder faults are named with their file; nothing unattributed on stderr ----------------------
def test_truncated_jpeg_and_corrupt_png_are_named_and_print_nothing(tmp_path, rng, capfd):
    whole_jpeg, whole_png = jpeg_bytes(rng), png_bytes(rng)
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(whole_jpeg[: len(whole_jpeg) * 2 // 3])
    corrupt = bytearray(whole_png)
    corrupt[60:80] = bytes(20)  # inside IDAT: its CRC no longer matches
    bad_crc = tmp_path / "crc.png"
    bad_crc.write_bytes(bytes(corrupt))
    cut_png = tmp_path / "cut.png"
    cut_png.write_bytes(whole_png[: len(whole_png) // 2])
    capfd.readouterr()
    for path, fault in ((truncated, "truncated JPEG"), (bad_crc, "corrupt PNG"), (cut_png, "truncated PNG")):
        with pytest.raises(InputError, match="cannot decode image {}: {}".format(path, fault)):
            decode_image(path)
    assert capfd.readouterr().err == ""
    # OpenCV's log level is back where it was
    assert cv2.utils.logging.getLogLevel() != cv2.utils.logging.LOG_LEVEL_SILENT


def test_whole_images_pass_the_completeness_check(rng, tmp_path):
    jpeg, png = jpeg_bytes(rng), png_bytes(rng)
    assert check_complete(jpeg) is None and check_complete(png) is None
    assert check_complete(jpeg + b"trailer after the end of the image") is None
    assert check_complete(b"BM" + bytes(60)) is None  # other formats are left to the decoder
    assert check_complete(jpeg[:-2])[0] == "truncated JPEG"
    assert check_complete(png[:-12])[1].startswith("no IEND chunk")
    path = tmp_path / "trailer.jpg"
    path.write_bytes(jpeg + b"trailer")
    assert np.array_equal(decode_image(path), cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_UNCHANGED))


def test_predict_names_a_truncated_jpeg(reference_models, tmp_path, rng):
    whole = tmp_path / "whole.jpg"
    whole.write_bytes(jpeg_bytes(rng))
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole.read_bytes()[:500])
    with changenet_trt.load(reference_models["learnable_dynamic"]) as clf:
        with pytest.raises(InputError, match="cut.jpg: truncated JPEG"):
            clf.predict([str(whole)], [str(cut)])


# -- 4. every file missing: say what is there instead -------------------------------------------------
def test_all_jpg_missing_but_png_present_names_ext_png(tmp_path):
    write_images(str(tmp_path), ["a", "b"], ext=".png")
    csv_path = write_csv(tmp_path / "d.csv", ["sample,golden,PASS,a\n", "sample,golden,BRIDGE,b\n"])
    seen = []
    with pytest.raises(DatasetError, match=r"no file has the extension \.jpg, but they exist as \.png \(--ext \.png\)"):
        load_dataset(csv_path, tmp_path, LightLayout(lights=(), ext=".jpg"), on_problem=seen.append)
    assert seen == []  # one error, not a line per row first


def test_all_missing_with_four_lights_and_upper_case_extension(tmp_path):
    lights = ("LowAngleLight", "SolderLight", "UniformLight", "WhiteLight")
    write_images(str(tmp_path), ["a_" + light for light in lights], ext=".JPG")
    csv_path = write_csv(tmp_path / "d.csv", ["sample,golden,PASS,a\n"])
    with pytest.raises(DatasetError, match=r"--ext \.JPG"):
        load_dataset(csv_path, tmp_path)


def test_all_missing_explains_lights_and_images_folder(tmp_path):
    lights = ("Low", "Solder")
    write_images(str(tmp_path), ["a_" + light for light in lights])
    csv_path = write_csv(tmp_path / "d.csv", ["sample,golden,PASS,a\n"])
    with pytest.raises(DatasetError, match=r"its lights are Low, Solder \(--lights Low,Solder"):
        load_dataset(csv_path, tmp_path, LightLayout(ext=".png"))
    write_images(str(tmp_path), ["b"])
    csv_path = write_csv(tmp_path / "e.csv", ["sample,golden,PASS,b\n"])
    with pytest.raises(DatasetError, match=r"b\.png \(one image, no lights\): --lights none"):
        load_dataset(csv_path, tmp_path, LightLayout(ext=".png"))
    os.makedirs(str(tmp_path / "other"))
    with pytest.raises(DatasetError, match=r"other/sample does not exist, but .* does: .*\(--images {}\)".format(
            tmp_path)):
        load_dataset(csv_path, tmp_path / "other", LightLayout(lights=(), ext=".png"))


def test_rows_held_back_until_a_usable_row_are_all_reported(tmp_path):
    write_images(str(tmp_path), ["c"])
    csv_path = write_csv(tmp_path / "d.csv", ["sample,golden,PASS,a\n", "sample,golden,PASS,b\n",
                                              "sample,golden,PASS,c\n", "sample,golden,PASS,d\n"])
    seen = []
    data = load_dataset(csv_path, tmp_path, ONE_IMAGE, on_problem=seen.append)
    assert [p.line for p in seen] == [2, 3, 5] and seen == data.problems


# -- 5. warned once, with counts -------------------------------------------------------------------
def test_look_alike_pass_labels_are_warned_once_with_counts(tmp_path):
    names = ["n{}".format(i) for i in range(16)]
    write_images(str(tmp_path), names)
    labels = ["pass"] * 12 + ["Pass", "PASS", "OK", "MISSING"]
    csv_path = write_csv(tmp_path / "d.csv", ["sample,golden,{},{}\n".format(label, name)
                                              for label, name in zip(labels, names)])
    warnings = []
    data = load_dataset(csv_path, tmp_path, ONE_IMAGE, on_warning=warnings.append)
    assert len(warnings) == 1 and warnings == data.warnings
    assert "1 row(s) labelled 'OK', 1 row(s) labelled 'Pass', 12 row(s) labelled 'pass' count as defects" in warnings[0]
    assert int(data.is_defect.sum()) == 15  # TAO's reading is kept: only PASS is good
    clean = write_csv(tmp_path / "e.csv", ["sample,golden,PASS,n0\n", "sample,golden,MISSING,n1\n"])
    assert load_dataset(clean, tmp_path, ONE_IMAGE, on_warning=warnings.append).warnings == [] and len(warnings) == 1


def test_square_model_with_linear_lights_suggests_grid():
    text = layout_warning(LightLayout(), 256, 256)
    assert "256x256" in text and "64x256 tiles" in text and "--concat grid" in text
    assert "--concat linear" in layout_warning(LightLayout(concat="grid"), 512, 128)
    assert layout_warning(LightLayout(), 512, 128) is None
    assert layout_warning(LightLayout(concat="grid"), 256, 256) is None
    assert layout_warning(LightLayout(lights=("A", "B")), 256, 128) is None  # both layouts give 128x128
    assert layout_warning(LightLayout(lights=()), 256, 256) is None
    warnings = []
    loader = PairLoader([], LightLayout(), (3, 256, 256), workers=1, on_warning=warnings.append)
    assert loader.warnings == warnings and len(warnings) == 1


def square_model(path):
    """Euclidean model on [B,3,256,256]: mean absolute difference."""
    shape = ["batch", 3, 256, 256]
    nodes = [helper.make_node("Sub", ["input_1", "input_2"], ["diff"]),
             helper.make_node("Abs", ["diff"], ["abs"]),
             helper.make_node("ReduceMean", ["abs"], ["output"], axes=[1, 2, 3], keepdims=0)]
    graph = helper.make_graph(nodes, "square", [helper.make_tensor_value_info("input_1", TensorProto.FLOAT, shape),
                                                helper.make_tensor_value_info("input_2", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch"])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path)


def test_eval_warns_once_about_a_square_model_read_linear_and_pass_labels(tmp_path):
    lights = ("L1", "L2", "L3", "L4")
    names = ["n{}".format(i) for i in range(6)]
    write_images(str(tmp_path), ["{}_{}".format(n, light) for n in names for light in lights])
    csv_path = write_csv(tmp_path / "d.csv", ["sample,golden,{},{}\n".format("pass" if i < 4 else "MISSING", n)
                                              for i, n in enumerate(names)])
    log = io.StringIO()
    result = evaluate(square_model(tmp_path / "square.onnx"), csv_path, out_dir=None,
                      layout=LightLayout(lights=lights, ext=".png"), progress=False, log=log, workers=2)
    printed = [line for line in log.getvalue().splitlines() if line.startswith("warning:")]
    assert len(printed) == 2 and printed == ["warning: " + text for text in result.summary["warnings"]]
    assert "4 row(s) labelled 'pass'" in printed[0] and "--concat grid" in printed[1]


def test_a_light_stretched_out_of_shape_is_warned_once(tmp_path, reference_models):
    names = ["n{}".format(i) for i in range(3)]
    write_images(str(tmp_path), [n + "_LowAngleLight" for n in names], size=128)
    csv_path = write_csv(tmp_path / "d.csv", ["sample,golden,PASS,{}\n".format(n) for n in names])
    log = io.StringIO()
    result = evaluate(reference_models["learnable_dynamic"], csv_path, out_dir=None, progress=False, log=log,
                      layout=LightLayout(lights=("LowAngleLight",), ext=".png"))
    assert len(result.summary["warnings"]) == 1 and log.getvalue().count("warning:") == 1
    assert "128x128" in result.summary["warnings"][0] and "512x128 tile" in result.summary["warnings"][0]
    assert "stretched 4.0x" in result.summary["warnings"][0]


# -- 6. eval with a shared classifier leaves its cutoff alone -----------------------------------------
def test_eval_with_a_cutoff_does_not_change_the_callers_classifier(set_with_problems, reference_models):
    with changenet_trt.load(reference_models["learnable_dynamic"], cutoff=0.25) as clf:
        result = evaluate(reference_models["learnable_dynamic"], set_with_problems, out_dir=None,
                          layout=LightLayout(lights=(), ext=".jpg"), progress=False, log=io.StringIO(),
                          classifier=clf, cutoff=0.75)
        assert clf.cutoff == 0.25
        assert result.summary["cutoff"] == 0.75
        assert result.decisions.tolist() == (result.scores > 0.75).tolist()
        other = clf.with_cutoff(0.5)
        assert other.cutoff == 0.5 and clf.cutoff == 0.25 and other.runner is clf.runner
        with pytest.raises(InputError, match="finite"):
            clf.with_cutoff(float("nan"))


def test_cutoffs_no_score_can_cross_are_warned(reference_models, caplog):
    with changenet_trt.load(reference_models["learnable_dynamic"], cutoff=-1):
        pass
    with changenet_trt.load(reference_models["learnable_dynamic"], cutoff=3):
        pass
    with changenet_trt.load(reference_models["learnable_dynamic"], cutoff=0.03):
        pass
    messages = [r.getMessage() for r in caplog.records if r.name == "changenet_trt.api"]
    assert len(messages) == 2
    assert "every pair is a defect" in messages[0] and "3% is 0.03" in messages[1]


# -- 7. a missing model file is named before any backend import ---------------------------------------
def test_missing_engine_is_named_without_tensorrt(no_tensorrt, tmp_path, capsys):
    with pytest.raises(EngineError, match="engine file not found: .*missing.engine"):
        changenet_trt.load(str(tmp_path / "missing.engine"))
    with pytest.raises(ModelContractError, match="model file not found: .*missing.onnx"):
        changenet_trt.load(str(tmp_path / "missing.onnx"))
    folder = tmp_path / "folder.engine"
    folder.mkdir()
    with pytest.raises(EngineError, match="engine path is a folder"):
        changenet_trt.load(str(folder))
    empty = tmp_path / "empty.plan"
    empty.write_bytes(b"")
    with pytest.raises(EngineError, match="engine file is empty"):
        changenet_trt.load(str(empty))
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"x")
    with pytest.raises(EngineError, match="is an ONNX model, not a TensorRT engine"):
        changenet_trt.load(str(onnx_file), backend="tensorrt")
    code = main(["infer", str(tmp_path / "missing.engine"), "--golden", "g.png", "--sample", "s.png"])
    err = capsys.readouterr().err
    assert code == 2 and "engine file not found" in err and "tensorrt" not in err.lower().replace(
        "a tensorrt engine", "")


# -- more bad inputs ---------------------------------------------------------------------------------
def test_csv_path_mistakes_say_what_they_are(tmp_path, reference_models):
    with pytest.raises(DatasetError, match=r"CSV path is a folder.*it holds d\.csv"):
        write_csv(tmp_path / "d.csv", ["s,g,PASS,a\n"])
        load_dataset(str(tmp_path), tmp_path)
    with pytest.raises(DatasetError, match="is a model file, not a CSV"):
        load_dataset(reference_models["learnable_dynamic"], tmp_path)
    semicolons = write_csv(tmp_path / "semi.csv", ["s;g;PASS;a\n"], header="input_path;golden_path;label;object_name\n")
    with pytest.raises(DatasetError, match="separated by ';': save it with commas"):
        load_dataset(semicolons, tmp_path)


def test_grayscale_16_bit_and_odd_sized_lights_are_scored(tmp_path, reference_models):
    root = str(tmp_path)
    for folder in ("golden", "sample"):
        os.makedirs(os.path.join(root, folder))
    images = {"gray": np.full((40, 30), 120, np.uint8), "deep": np.full((128, 128, 3), 30000, np.uint16),
              "rgba": np.full((7, 200, 4), 90, np.uint8)}
    for name, image in images.items():
        for folder in ("golden", "sample"):
            assert cv2.imwrite(os.path.join(root, folder, name + ".png"), image)
    csv_path = write_csv(tmp_path / "d.csv", ["sample,golden,PASS,{}\n".format(name) for name in images])
    result = evaluate(reference_models["learnable_dynamic"], csv_path, out_dir=None, layout=ONE_IMAGE,
                      progress=False, log=io.StringIO())
    assert result.summary["pairs"] == 3 and result.summary["skipped"] == 0
