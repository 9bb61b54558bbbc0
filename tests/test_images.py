"""Image files as users expect (d3sr.images and `d3sr upscale`): alpha, gray, 16 bits,
EXIF orientation, ICC and EXIF carried, JPEG quality, atomic writes, and no input ever
overwritten."""
import os

import numpy as np
import pytest
from PIL import Image

import d3sr
from d3sr import images
from d3sr.cli import main
from d3sr.images import Picture, bicubic, read_image, upscale_picture, write_image
from conftest import DATA

CKPT = os.path.join(DATA, "generator_tiny")
rng = np.random.default_rng(0)


def random_pixels(h, w, c, dtype=np.uint8):
    top = 255 if dtype == np.uint8 else 65535
    return rng.integers(0, top + 1, (h, w, c), dtype=np.int64).astype(dtype)


@pytest.fixture(scope="module")
def upscaler():
    return d3sr.Upscaler.load(CKPT)


def make_srgb_profile() -> bytes:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


SRGB = make_srgb_profile()  # once: a profile's header holds the time it was made


def srgb_profile() -> bytes:
    return SRGB


# ---- the file helpers round-trip exactly ---------------------------------------------

@pytest.mark.parametrize("ext", [".png", ".tif"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_lossless_formats_round_trip_exactly(tmp_path, ext, dtype, channels):
    pixels = random_pixels(13, 17, channels, dtype)
    path = write_image(tmp_path / f"a{ext}", Picture(pixels, icc_profile=srgb_profile()))
    back = read_image(path)
    assert back.pixels.dtype == dtype and back.pixels.shape == pixels.shape
    np.testing.assert_array_equal(back.pixels, pixels)
    assert back.icc_profile == srgb_profile()


def test_sixteen_bit_png_is_sixteen_bit_on_disk(tmp_path):
    pixels = random_pixels(5, 6, 3, np.uint16)
    write_image(tmp_path / "a.png", pixels)
    with open(tmp_path / "a.png", "rb") as f:
        header = f.read(26)
    assert header[24] == 16 and header[25] == 2  # IHDR: bit depth 16, colour type RGB


def test_jpeg_quality_defaults_to_95(tmp_path):
    pixels = random_pixels(32, 32, 3)
    write_image(tmp_path / "default.jpg", pixels)
    write_image(tmp_path / "q60.jpg", pixels, quality=60)
    Image.fromarray(pixels).save(tmp_path / "pillow95.jpg", quality=95)
    Image.fromarray(pixels).save(tmp_path / "pillow75.jpg")
    tables = {name: Image.open(tmp_path / f"{name}.jpg").quantization for name in ("default", "q60", "pillow95", "pillow75")}
    assert tables["default"] == tables["pillow95"] != tables["pillow75"]
    assert tables["q60"] != tables["default"]
    with pytest.raises(ValueError, match="quality must be an integer from 1 to 100"):
        write_image(tmp_path / "bad.jpg", pixels, quality=0)


def test_alpha_cannot_go_to_jpeg(tmp_path):
    with pytest.raises(ValueError, match="JPEG has no alpha channel"):
        write_image(tmp_path / "a.jpg", random_pixels(8, 8, 4))
    assert os.listdir(tmp_path) == []


def test_unknown_extension_and_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="cannot tell the image format"):
        write_image(tmp_path / "a.xyz", random_pixels(8, 8, 3))
    with pytest.raises(TypeError, match="uint8 or uint16"):
        write_image(tmp_path / "a.png", np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        write_image(tmp_path / "a.png", np.zeros((8, 8, 5), np.uint8))
    with pytest.raises(TypeError, match="file path"):
        read_image(3)
    (tmp_path / "not.png").write_bytes(b"hello")
    with pytest.raises(ValueError, match="not an image file"):
        read_image(tmp_path / "not.png")
    with pytest.raises(FileNotFoundError):
        read_image(tmp_path / "missing.png")


@pytest.mark.parametrize("ext", [".png", ".tif"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_a_truncated_or_garbled_file_is_a_value_error(tmp_path, dtype, ext):
    path = write_image(tmp_path / f"a{ext}", random_pixels(64, 64, 3, dtype))
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(ValueError, match=f"a{ext}"):
        read_image(path)
    garbled = bytearray(data)
    garbled[8:40] = bytes(range(200, 232))  # PNG: the header chunk; TIFF: the first tags
    open(path, "wb").write(bytes(garbled))
    with pytest.raises(ValueError, match=f"a{ext}"):
        read_image(path)


def test_a_tiff_with_float_strip_offsets_is_a_value_error(tmp_path):
    # Found by fuzz/targets.py: Pillow raised TypeError seeking to a FLOAT-typed StripOffsets.
    import base64

    path = tmp_path / "strips.tif"
    path.write_bytes(base64.b64decode(
        "SUkqAAgAAAAKAAABBAABAAAABwAAAAEBBAABAAAACQAAAAIBAwADAAAAhgAAAAMBAwABAAAAAQAAAAYBAwABAAAABgAAABEB"
        "CwABAAAAjAAAABUBAwABAAAAAwAAABYBBAABAAAACQAAABcBBAABAAAAvQAAABwBAwABAAAAAQAAAAAAAAAIAAgACAA++hnc"
        "GmEsiat0nStDZYJftOSahQbpOw=="))
    with pytest.raises(ValueError, match="strips.tif: cannot read the image"):
        read_image(path)


def test_a_sixteen_bit_tiff_bomb_is_refused(tmp_path, monkeypatch):
    from PIL import Image as PILImage

    path = write_image(tmp_path / "a.tif", random_pixels(64, 64, 2, np.uint16))  # gray + alpha: tifffile's path
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ValueError, match="decompression-bomb limit"):
        read_image(path)


# ---- EXIF ----------------------------------------------------------------------------

def test_exif_orientation_is_applied_and_exif_carried(tmp_path):
    upright = random_pixels(12, 20, 3)  # taller than wide after the turn below is undone
    exif = Image.Exif()
    exif[images.ORIENTATION_TAG] = 6  # "turn 90 degrees clockwise to view": the camera stored it turned left
    exif[0x010F] = "d3sr test camera"  # Make
    stored = np.ascontiguousarray(np.rot90(upright, 1))  # what a phone held sideways writes
    Image.fromarray(stored).save(tmp_path / "phone.png", exif=exif)

    picture = read_image(tmp_path / "phone.png")
    np.testing.assert_array_equal(picture.pixels, upright)
    write_image(tmp_path / "out.png", picture)
    written = Image.open(tmp_path / "out.png")
    assert written.getexif()[0x010F] == "d3sr test camera"
    assert written.getexif().get(images.ORIENTATION_TAG, 1) == 1  # a viewer must not turn it again
    assert written.size == (20, 12)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_matches_pillow(tmp_path, orientation):
    from PIL import ImageOps

    exif = Image.Exif()
    exif[images.ORIENTATION_TAG] = orientation
    Image.fromarray(random_pixels(5, 7, 3)).save(tmp_path / "a.png", exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "a.png")))
    np.testing.assert_array_equal(read_image(tmp_path / "a.png").pixels, expected)


# ---- the upscaling pipeline around the model -----------------------------------------

def identity(rgb):
    return rgb


def bicubic_x2(rgb):
    return bicubic(rgb[None], 2)[0]


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_sixteen_bits_survive_an_identity_model_exactly(channels):
    pixels = random_pixels(9, 11, channels, np.uint16)
    out = upscale_picture(Picture(pixels, icc_profile=b"icc", exif=b"Exif\x00\x00"), identity)
    assert out.pixels.dtype == np.uint16 and out.icc_profile == b"icc" and out.exif == b"Exif\x00\x00"
    # (gray goes to RGB and back through BT.601 luma, whose weights sum to 1)
    np.testing.assert_array_equal(out.pixels, pixels)


def test_alpha_is_upscaled_by_bicubic_and_put_back():
    pixels = random_pixels(8, 10, 4)
    out = upscale_picture(Picture(pixels), bicubic_x2)
    assert out.pixels.shape == (16, 20, 4)
    alpha = bicubic(pixels[None, :, :, 3:].astype(np.float32) / 255, 2)[0, :, :, 0]
    np.testing.assert_array_equal(out.pixels[:, :, 3], np.round(alpha * 255).astype(np.uint8))
    colour = bicubic(pixels[None, :, :, :3].astype(np.float32) / 255, 2)[0]
    np.testing.assert_array_equal(out.pixels[:, :, :3], np.round(colour * 255).astype(np.uint8))


def test_a_model_that_returns_the_wrong_thing_is_named():
    with pytest.raises(ValueError, match="float32"):
        upscale_picture(Picture(random_pixels(8, 8, 3)), lambda rgb: (rgb * 255).astype(np.uint8))
    with pytest.raises(ValueError, match="integer multiple"):
        upscale_picture(Picture(random_pixels(8, 8, 3)), lambda rgb: np.zeros((12, 16, 3), np.float32))


# ---- the command line ----------------------------------------------------------------

def run_upscale(*args):
    return main(["upscale", *map(str, args), "--checkpoint", CKPT, "--scale", "2"])


def test_cli_keeps_alpha_and_gray(tmp_path, upscaler):
    rgba = random_pixels(10, 12, 4)
    gray = random_pixels(10, 12, 1)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    Image.fromarray(gray[:, :, 0]).save(tmp_path / "gray.png")
    assert run_upscale(tmp_path / "rgba.png", tmp_path / "gray.png", "-o", tmp_path / "out") == 0

    out = Image.open(tmp_path / "out" / "rgba.png")
    assert out.mode == "RGBA" and out.size == (24, 20)
    out = np.asarray(out)
    np.testing.assert_array_equal(out[:, :, :3], upscaler.upscale(rgba[:, :, :3], scale=2))
    alpha = bicubic(rgba[None, :, :, 3:].astype(np.float32) / 255, 2)[0, :, :, 0]
    np.testing.assert_array_equal(out[:, :, 3], np.round(alpha * 255).astype(np.uint8))

    out = Image.open(tmp_path / "out" / "gray.png")
    assert out.mode == "L" and out.size == (24, 20)


def test_cli_sixteen_bit_in_sixteen_bit_out(tmp_path, upscaler):
    pixels = random_pixels(10, 12, 3, np.uint16)
    write_image(tmp_path / "deep.png", pixels)
    write_image(tmp_path / "deep.tif", pixels)
    assert run_upscale(tmp_path / "deep.png", tmp_path / "deep.tif", "-o", tmp_path / "out", "--format", "same") == 0
    expected = upscaler.upscale(pixels.astype(np.float32) / 65535, scale=2)  # the model runs in float
    expected = np.round(expected.astype(np.float64) * 65535).astype(np.uint16)
    for name in ("deep.png", "deep.tif"):
        out = read_image(tmp_path / "out" / name)
        assert out.bits == 16
        np.testing.assert_array_equal(out.pixels, expected)
    assert np.any(expected % 257), "an 8-bit detour would leave only multiples of 257"


def test_cli_carries_icc_and_exif_and_writes_jpeg_at_95(tmp_path):
    exif = Image.Exif()
    exif[0x010F] = "d3sr test camera"
    Image.fromarray(random_pixels(10, 12, 3)).save(tmp_path / "in.jpg", icc_profile=srgb_profile(), exif=exif,
                                                   quality=80)
    assert run_upscale(tmp_path / "in.jpg", "-o", tmp_path / "out.jpg") == 0
    out = Image.open(tmp_path / "out.jpg")
    assert out.info["icc_profile"] == srgb_profile()
    assert out.getexif()[0x010F] == "d3sr test camera"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "q95.jpg", quality=95)
    assert out.quantization == Image.open(tmp_path / "q95.jpg").quantization


def test_cli_refuses_to_write_over_an_input(tmp_path, capsys):
    Image.fromarray(random_pixels(10, 12, 3)).save(tmp_path / "a.png")
    before = (tmp_path / "a.png").read_bytes()
    assert run_upscale(tmp_path / "a.png", "-o", tmp_path / "a.png") == 2
    assert "is an input" in capsys.readouterr().err
    assert run_upscale(tmp_path / "a.png", "-o", tmp_path / "." / "a.png") == 2
    assert run_upscale(tmp_path, "-o", tmp_path) == 2
    assert "folder of the inputs" in capsys.readouterr().err
    os.link(tmp_path / "a.png", tmp_path / "b.png")  # the same file under another name
    assert run_upscale(tmp_path / "a.png", "-o", tmp_path / "b.png") == 2
    assert (tmp_path / "a.png").read_bytes() == before and sorted(os.listdir(tmp_path)) == ["a.png", "b.png"]


def test_cli_refuses_two_inputs_onto_one_output(tmp_path, capsys):
    pixels = random_pixels(10, 12, 3)
    (tmp_path / "in").mkdir()
    Image.fromarray(pixels).save(tmp_path / "in" / "a.png")
    Image.fromarray(pixels).save(tmp_path / "in" / "a.jpg")
    assert run_upscale(tmp_path / "in", "-o", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "a.jpg and" in err and "a.png would both be written to" in err and "--format same" in err
    assert not (tmp_path / "out").exists()
    assert run_upscale(tmp_path / "in", "-o", tmp_path / "out", "--format", "same") == 0
    assert sorted(os.listdir(tmp_path / "out")) == ["a.jpg", "a.png"]


def test_cli_refuses_alpha_into_jpeg_before_running_the_model(tmp_path, capsys):
    Image.fromarray(random_pixels(10, 12, 4)).save(tmp_path / "a.png")
    assert run_upscale(tmp_path / "a.png", "-o", tmp_path / "a.jpg") == 2
    assert "JPEG has no alpha channel" in capsys.readouterr().err
    assert not (tmp_path / "a.jpg").exists()


def test_cli_skip_existing(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(random_pixels(10, 12, 3)).save(tmp_path / "in" / name)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.png").write_bytes(b"kept")
    assert run_upscale(tmp_path / "in", "-o", tmp_path / "out", "--skip-existing") == 0
    assert (tmp_path / "out" / "a.png").read_bytes() == b"kept"
    assert read_image(tmp_path / "out" / "b.png").size == (24, 20)
    assert "skipping 1 of 2" in capsys.readouterr().err
    # Nothing left to do: the checkpoint is not even loaded.
    assert main(["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--skip-existing",
                 "--checkpoint", str(tmp_path / "no-such-checkpoint")]) == 0


# ---- atomic writes -------------------------------------------------------------------

def test_an_interrupted_write_leaves_the_old_file_and_no_partial_one(tmp_path, monkeypatch):
    target = tmp_path / "a.png"
    target.write_bytes(b"the previous result")

    def half_then_interrupted(f, *args):
        f.write(b"\x89PNG half of an image")
        raise KeyboardInterrupt

    monkeypatch.setattr(images, "_write_pillow", half_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_image(target, random_pixels(8, 8, 3))
    assert target.read_bytes() == b"the previous result"
    assert os.listdir(tmp_path) == ["a.png"]
    monkeypatch.undo()
    write_image(target, random_pixels(8, 8, 3))
    assert read_image(target).size == (8, 8) and os.listdir(tmp_path) == ["a.png"]
    assert oct(os.stat(target).st_mode & 0o777) != oct(0o600)  # not the temporary file's private mode
