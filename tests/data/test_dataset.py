"""TAO CSV quirks, light-file resolution, broken rows, and the buffer-filling loader."""

import os

import cv2
import numpy as np
import pytest

from changenet_trt.data.dataset import (
    TAO_LIGHTS,
    LightLayout,
    PairLoader,
    RowProblem,
    load_dataset,
    parse_grid,
    parse_lights,
)
from changenet_trt.data.preprocess import prepare_tiles, tile_boxes
from changenet_trt.errors import DatasetError


def _image(path, value):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(path, np.full((16, 16, 3), value, dtype=np.uint8))


def make_layout(root, objects, lights=TAO_LIGHTS, ext=".png", skip=()):
    """Write light files for ``objects`` [(input_dir, golden_dir, name)] under ``root``."""
    for k, (input_dir, golden_dir, name) in enumerate(objects):
        for j, light in enumerate(lights or [None]):
            fname = name + ("_" + light if light else "") + ext
            for folder in (input_dir, golden_dir):
                path = os.path.join(root, folder, fname)
                if path not in skip:
                    _image(path, 10 * k + j)


def write_csv(path, text):
    with open(path, "w", newline="") as handle:
        handle.write(text)
    return str(path)


def test_tao_csv_with_leading_zeros_and_extra_columns(tmp_path):
    make_layout(str(tmp_path), [("test/b1", "golden/b1", "0012"), ("test/b1", "golden/b1", "R7")])
    csv_path = write_csv(
        tmp_path / "data.csv",
        ",input_path,golden_path,label,object_name,comment\n"
        "0,test/b1,golden/b1,PASS,0012,\"a note, with a comma\"\n"
        "\n"
        "1,test/b1,golden/b1, MISSING ,R7,x\n",
    )
    data = load_dataset(csv_path, tmp_path, LightLayout(ext=".png"))
    assert [p.object_name for p in data.pairs] == ["0012", "R7"]
    assert [p.line for p in data.pairs] == [2, 4]  # the blank line 3 is skipped, numbering kept
    assert data.labels == ["PASS", "MISSING"]
    assert data.is_defect.tolist() == [False, True]
    first = data.pairs[0]
    assert first.sample_files == tuple(str(tmp_path / "test/b1" / "0012_{}.png".format(li)) for li in TAO_LIGHTS)
    assert first.golden_files[0] == str(tmp_path / "golden/b1" / "0012_LowAngleLight.png")
    assert data.problems == [] and data.rows == 2


def test_header_names_are_matched_loosely_and_bom_is_ignored(tmp_path):
    make_layout(str(tmp_path), [("s", "g", "7")])
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffObject_Name , LABEL,golden_path,input_path\n7,PASS,g,s\n".encode("utf-8"))
    data = load_dataset(str(path), tmp_path, LightLayout(ext=".png"))
    assert data.pairs[0].object_name == "7" and data.pairs[0].input_path == "s"


def test_images_default_to_the_csv_folder(tmp_path):
    make_layout(str(tmp_path), [("s", "g", "a")])
    csv_path = write_csv(tmp_path / "d.csv", "input_path,golden_path,label,object_name\ns,g,PASS,a\n")
    assert load_dataset(csv_path, layout=LightLayout(ext="png")).images_dir == os.path.dirname(csv_path)


def test_missing_lights_are_reported_and_skipped(tmp_path):
    missing = str(tmp_path / "s" / "b_SolderLight.png")
    make_layout(str(tmp_path), [("s", "g", "a"), ("s", "g", "b"), ("s", "g", "c")], skip=(missing,))
    csv_path = write_csv(
        tmp_path / "d.csv",
        "input_path,golden_path,label,object_name\ns,g,PASS,a\ns,g,PASS,b\ns,g,BRIDGE,c\ns,g,PASS,nothere\n",
    )
    seen = []
    data = load_dataset(csv_path, tmp_path, LightLayout(ext=".png"), on_problem=seen.append)
    assert [p.object_name for p in data.pairs] == ["a", "c"]
    assert seen == data.problems
    assert data.problems[0] == RowProblem(3, "b", missing, "missing file")
    assert data.problems[1].line == 5 and "(and 7 more)" in data.problems[1].reason
    assert str(data.problems[0]) == "line 3 (object b): missing file: {}".format(missing)
    with pytest.raises(DatasetError, match="line 3 .*b_SolderLight.png"):
        load_dataset(csv_path, tmp_path, LightLayout(ext=".png"), strict=True)


def test_short_rows_and_empty_fields_are_problems(tmp_path):
    make_layout(str(tmp_path), [("s", "g", "a")])
    csv_path = write_csv(
        tmp_path / "d.csv",
        "input_path,golden_path,label,object_name\ns,g,PASS,a\ns,g,PASS\ns,g,,a\n",
    )
    data = load_dataset(csv_path, tmp_path, LightLayout(ext=".png"))
    assert len(data) == 1
    assert [p.line for p in data.problems] == [3, 4]
    assert "fields" in data.problems[0].reason and "empty label" in data.problems[1].reason


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "empty"),
        ("input_path,golden_path,label,object_name\n", "no data rows"),
        ("sample,golden,label,name\nx,y,PASS,a\n", "lacks the column"),
        ("input_path;golden_path;label;object_name\nx;y;PASS;a\n", "lacks the column"),
    ],
)
def test_unusable_csv_files(tmp_path, text, match):
    csv_path = write_csv(tmp_path / "bad.csv", text)
    with pytest.raises(DatasetError, match=match):
        load_dataset(csv_path, tmp_path)


def test_wrong_header_says_what_is_expected_and_found(tmp_path):
    csv_path = write_csv(tmp_path / "bad.csv", "sample,golden,label,name\nx,y,PASS,a\n")
    with pytest.raises(DatasetError) as info:
        load_dataset(csv_path, tmp_path)
    text = str(info.value)
    assert "input_path, golden_path, label, object_name" in text and "'sample'" in text


def test_no_usable_row_and_missing_paths(tmp_path):
    csv_path = write_csv(tmp_path / "d.csv", "input_path,golden_path,label,object_name\ns,g,PASS,a\n")
    with pytest.raises(DatasetError, match="no usable pair"):
        load_dataset(csv_path, tmp_path)
    with pytest.raises(DatasetError, match="not found"):
        load_dataset(tmp_path / "nope.csv", tmp_path)
    with pytest.raises(DatasetError, match="image folder"):
        load_dataset(csv_path, tmp_path / "nowhere")


def test_single_image_mode(tmp_path):
    make_layout(str(tmp_path), [("s", "g", "0001")], lights=(), ext=".jpg")
    csv_path = write_csv(tmp_path / "d.csv", "input_path,golden_path,label,object_name\ns,g,PASS,0001\n")
    data = load_dataset(csv_path, tmp_path, LightLayout(lights=(), ext=".jpg"))
    assert data.pairs[0].sample_files == (str(tmp_path / "s" / "0001.jpg"),)


def test_layout_options():
    assert parse_lights("A, B,C") == ("A", "B", "C")
    assert parse_lights("none") == ()
    assert parse_grid("2x2") == (2, 2) and parse_grid("1X4") == (1, 4)
    with pytest.raises(DatasetError):
        parse_grid("two")
    with pytest.raises(DatasetError):
        parse_lights("A,,B")
    with pytest.raises(DatasetError):
        LightLayout(lights=("A", "A"))
    with pytest.raises(DatasetError):
        LightLayout(concat="zigzag")
    assert LightLayout(ext="png").ext == ".png"
    assert LightLayout().boxes(512, 128)[3] == (384, 0, 128, 128)
    assert LightLayout(concat="grid").boxes(256, 256)[1] == (0, 128, 128, 128)
    assert "4 lights" in LightLayout().describe()


def test_loader_fills_rows_and_sets_aside_undecodable_pairs(tmp_path):
    objects = [("s", "g", "p{}".format(i)) for i in range(5)]
    make_layout(str(tmp_path), objects)
    corrupt = tmp_path / "g" / "p2_WhiteLight.png"
    corrupt.write_bytes(b"\x89PNG garbage")
    rows = "".join("s,g,PASS,p{}\n".format(i) for i in range(5))
    csv_path = write_csv(tmp_path / "d.csv", "input_path,golden_path,label,object_name\n" + rows)
    data = load_dataset(csv_path, tmp_path, LightLayout(ext=".png"))
    assert len(data) == 5  # the file exists: only decoding can tell
    golden = np.full((5, 3, 64, 16), np.nan, dtype=np.float32)
    sample = np.full_like(golden, np.nan)
    seen = []
    with PairLoader(data.pairs, data.layout, (3, 64, 16), "tao", workers=2, on_problem=seen.append) as loader:
        loader.fill(golden[:3], sample[:3], 0, 3)
        loader.fill(golden[3:], sample[3:], 3, 5)
    assert list(loader.failed) == [2]
    problem = loader.failed[2]
    assert problem.line == 4 and problem.path == str(corrupt) and "cannot decode" in problem.reason
    assert seen == [problem]
    assert not golden[2].any() and not sample[2].any()
    # every other row equals preparing its files directly
    boxes = tile_boxes(4, 64, 16)
    for i in (0, 1, 3, 4):
        want = np.zeros((3, 64, 16), dtype=np.float32)
        prepare_tiles(data.pairs[i].golden_files, want, boxes)
        assert np.array_equal(golden[i], want)
        prepare_tiles(data.pairs[i].sample_files, want, boxes)
        assert np.array_equal(sample[i], want)


def test_loader_strict_stops_at_an_undecodable_pair(tmp_path):
    make_layout(str(tmp_path), [("s", "g", "a")])
    (tmp_path / "s" / "a_UniformLight.png").write_bytes(b"")
    csv_path = write_csv(tmp_path / "d.csv", "input_path,golden_path,label,object_name\ns,g,PASS,a\n")
    data = load_dataset(csv_path, tmp_path, LightLayout(ext=".png"))
    buf = np.zeros((1, 3, 64, 16), dtype=np.float16)
    with PairLoader(data.pairs, data.layout, (3, 64, 16), strict=True) as loader:
        with pytest.raises(DatasetError, match="line 2 .*a_UniformLight.png"):
            loader.fill(buf, buf.copy(), 0, 1)
