"""Preprocessing: equal to a plain TAO Deploy-style implementation, any image format, float16."""

import cv2
import numpy as np
import pytest

from changenet_trt.data.preprocess import (
    PRESETS,
    Normalization,
    decode_image,
    get_normalization,
    parse_normalization,
    prepare_batch,
    prepare_image,
    prepare_tiles,
    read_image,
    tile_boxes,
    to_rgb8,
    write_normalized,
)
from changenet_trt.errors import InputError

LIGHT = 128


def tao_style_light(path, size=(LIGHT, LIGHT), norm=PRESETS["tao"]):
    """What TAO Deploy's loader does with one light: RGB, float32, bilinear resize, CHW,
    x/255, -mean, /std (the image read with OpenCV instead of PIL)."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=2)
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    else:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    image = np.asarray(image, np.float32)
    image = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    image = np.transpose(image, (2, 0, 1))
    image = image / 255.0
    for c in range(3):
        image[c] = (image[c] - norm.mean[c]) / norm.std[c]
    return image


def tao_style_input(paths, norm=PRESETS["tao"]):
    """Four lights concatenated along H into a float64 [3, 512, 128], as TAO's loader does."""
    out = np.zeros((3, LIGHT * len(paths), LIGHT))
    for i, path in enumerate(paths):
        out[:, i * LIGHT:(i + 1) * LIGHT, :] = tao_style_light(path, norm=norm)
    return out


@pytest.fixture
def rng():
    return np.random.default_rng(4)


def _write(path, image):
    assert cv2.imwrite(str(path), image)
    return str(path)


@pytest.fixture
def light_files(tmp_path, rng):
    """Four lights of assorted formats: 8-bit BGR PNG, wrong-size JPEG, grayscale PNG, 16-bit RGBA PNG."""
    bgr = rng.integers(0, 256, (LIGHT, LIGHT, 3), dtype=np.uint8)
    wrong = rng.integers(0, 256, (150, 97, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (LIGHT, LIGHT), dtype=np.uint8)
    rgba16 = rng.integers(0, 65536, (64, 200, 4), dtype=np.uint16)
    return [
        _write(tmp_path / "a_LowAngleLight.png", bgr),
        _write(tmp_path / "a_SolderLight.jpg", wrong),
        _write(tmp_path / "a_UniformLight.png", gray),
        _write(tmp_path / "a_WhiteLight.png", rgba16),
    ]


def test_four_lights_equal_a_tao_style_pipeline(light_files):
    want = tao_style_input(light_files)
    dst = np.full((3, 512, 128), np.nan, dtype=np.float32)
    prepare_tiles(light_files, dst, tile_boxes(4, 512, 128))
    assert np.isfinite(dst).all()
    assert np.abs(dst - want).max() <= 1e-5


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_follow_the_formula(light_files, preset):
    want = tao_style_input(light_files, norm=PRESETS[preset])
    dst = np.zeros((3, 512, 128), dtype=np.float32)
    prepare_tiles(light_files, dst, tile_boxes(4, 512, 128), preset)
    assert np.abs(dst - want).max() <= 1e-5


def test_float16_destination_rounds_once(light_files):
    boxes = tile_boxes(4, 512, 128)
    full = np.zeros((3, 512, 128), dtype=np.float32)
    half = np.zeros((3, 512, 128), dtype=np.float16)
    prepare_tiles(light_files, full, boxes)
    prepare_tiles(light_files, half, boxes)
    # computed in float32, rounded to float16 once: exactly the float32 result cast
    assert np.array_equal(half, full.astype(np.float16))
    assert np.abs(half.astype(np.float64) - tao_style_input(light_files)).max() < 4e-3


def test_writes_only_its_row_of_a_batch_buffer(light_files):
    batch = np.full((3, 3, 512, 128), np.nan, dtype=np.float32)
    prepare_tiles(light_files, batch[1], tile_boxes(4, 512, 128))
    assert np.isnan(batch[0]).all() and np.isnan(batch[2]).all()
    assert np.isfinite(batch[1]).all()


def test_rgb_arrays_are_not_channel_swapped(tmp_path, rng):
    rgb = rng.integers(0, 256, (LIGHT, LIGHT, 3), dtype=np.uint8)
    path = _write(tmp_path / "x.png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    from_file = np.zeros((3, LIGHT, LIGHT), dtype=np.float32)
    from_array = np.zeros_like(from_file)
    prepare_image(path, from_file)
    prepare_image(rgb, from_array)
    assert np.array_equal(from_file, from_array)
    red = np.zeros((LIGHT, LIGHT, 3), dtype=np.uint8)
    red[..., 0] = 255
    prepare_image(red, from_array)
    assert from_array[0].min() > 2.0 and from_array[2].max() < -1.5


def test_single_image_resized_to_the_model_input(tmp_path, rng):
    path = _write(tmp_path / "big.png", rng.integers(0, 256, (700, 180, 3), dtype=np.uint8))
    dst = np.zeros((3, 512, 128), dtype=np.float32)
    prepare_image(path, dst)
    assert np.abs(dst - tao_style_light(path, size=(512, 128))).max() <= 1e-5


def test_grid_layout_places_tiles_row_major(tmp_path):
    paths = []
    for i in range(4):
        paths.append(_write(tmp_path / "g{}.png".format(i), np.full((LIGHT, LIGHT, 3), 40 * (i + 1), dtype=np.uint8)))
    boxes = tile_boxes(4, 256, 256, concat="grid", grid=(2, 2))
    assert boxes == [(0, 0, 128, 128), (0, 128, 128, 128), (128, 0, 128, 128), (128, 128, 128, 128)]
    dst = np.zeros((3, 256, 256), dtype=np.float32)
    prepare_tiles(paths, dst, boxes, Normalization((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)))
    assert dst[0, 10, 10] == pytest.approx(40 / 255) and dst[0, 10, 200] == pytest.approx(80 / 255)
    assert dst[0, 200, 10] == pytest.approx(120 / 255) and dst[0, 200, 200] == pytest.approx(160 / 255)


@pytest.mark.parametrize(
    "args",
    [
        dict(count=3, height=512, width=128),  # 512 / 3 does not divide
        dict(count=4, height=256, width=256, concat="grid", grid=(3, 2)),  # 6 cells for 4 lights
        dict(count=4, height=512, width=128, concat="diagonal"),
        dict(count=0, height=512, width=128),
    ],
)
def test_bad_tilings_are_refused(args):
    with pytest.raises(InputError):
        tile_boxes(**args)


def test_prepare_batch_in_parallel_equals_one_by_one(tmp_path, rng):
    paths = [_write(tmp_path / "b{}.png".format(i), rng.integers(0, 256, (90, 40, 3), dtype=np.uint8)) for i in range(7)]
    together = np.zeros((8, 3, 512, 128), dtype=np.float32)
    prepare_batch(paths, together)
    for i, path in enumerate(paths):
        alone = np.zeros((3, 512, 128), dtype=np.float32)
        prepare_image(path, alone)
        assert np.array_equal(together[i], alone)
    assert not together[7].any()


def test_prepare_batch_names_the_bad_file(tmp_path, rng):
    good = _write(tmp_path / "good.png", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(InputError, match="bad.png"):
        prepare_batch([good, str(bad), good], np.zeros((3, 3, 32, 32), dtype=np.float32))


def test_decode_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        decode_image(tmp_path / "missing.png")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="cannot decode"):
        decode_image(empty)
    truncated = tmp_path / "trunc.png"
    ok, data = cv2.imencode(".png", np.zeros((32, 32, 3), dtype=np.uint8))
    truncated.write_bytes(data.tobytes()[:40])
    with pytest.raises(InputError):
        decode_image(truncated)


def test_to_rgb8_and_read_image_handle_every_format(tmp_path, rng):
    gray = rng.integers(0, 256, (5, 6), dtype=np.uint8)
    assert np.array_equal(to_rgb8(gray), np.stack([gray] * 3, axis=2))
    rgba = rng.integers(0, 256, (5, 6, 4), dtype=np.uint8)
    assert np.array_equal(to_rgb8(rgba), rgba[..., :3])
    deep = rng.integers(0, 65536, (5, 6, 3), dtype=np.uint16)
    assert np.array_equal(to_rgb8(deep), (deep >> 8).astype(np.uint8))
    bgr = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    path = _write(tmp_path / "c.png", bgr)
    assert np.array_equal(read_image(path), bgr[..., ::-1])
    with pytest.raises(InputError, match="pixel type"):
        to_rgb8(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(InputError, match="not an image"):
        to_rgb8(np.zeros((4, 4, 2), dtype=np.uint8))


def test_write_normalized_refuses_bad_destinations():
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    with pytest.raises(InputError):
        write_normalized(np.zeros((3, 8, 8), dtype=np.float64), image)
    with pytest.raises(InputError):
        write_normalized(np.zeros((8, 8, 3), dtype=np.float32), image)


def test_normalisation_presets_and_custom_values():
    assert get_normalization(None) == PRESETS["tao"]
    assert get_normalization("deepstream").mean == (0.5, 0.5, 0.5)
    custom = parse_normalization("0.1,0.2,0.3/0.5,0.5,0.25")
    assert custom == Normalization((0.1, 0.2, 0.3), (0.5, 0.5, 0.25))
    assert parse_normalization("tao") == PRESETS["tao"]
    with pytest.raises(InputError, match="preset"):
        get_normalization("imagenet")
    for bad in ("imagenet", "0.1,0.2/0.5,0.5,0.5", "1,2,3/0,1,1", "a,b,c/d,e,f"):
        with pytest.raises(InputError):
            parse_normalization(bad)
