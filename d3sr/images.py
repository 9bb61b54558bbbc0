"""Images in and out of d3sr: arrays checked, normalised and resized; image files read and
written as users expect (upright, alpha, gray, 16 bits, ICC and EXIF kept, atomic writes)."""
from __future__ import annotations

import os
import struct
import tempfile
import zlib
from typing import Callable, Optional, Tuple

import numpy as np


def as_image_batch(image, name: str = "image") -> Tuple[np.ndarray, bool, bool]:
    """(batch [N, H, W, 3] float32 in [0, 1], whether one image came, whether it
    was uint8) from H x W x 3 or N x H x W x 3, uint8 or float32 in [0, 1]."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray [H, W, 3] or [N, H, W, 3], not {type(image).__name__}")
    if image.ndim not in (3, 4) or image.shape[-1] != 3:
        raise ValueError(f"{name} must have shape [H, W, 3] or [N, H, W, 3], got {image.shape}")
    if image.dtype == np.uint8:
        batch = image.astype(np.float32) / 255
    elif image.dtype == np.float32:
        if not np.isfinite(image).all():
            raise ValueError(f"{name} contains NaN or Inf")
        if image.min(initial=0) < 0 or image.max(initial=0) > 1:
            raise ValueError(f"float32 {name} values must be in [0, 1], got [{image.min()}, {image.max()}]")
        batch = image
    else:
        raise TypeError(f"{name} must be uint8 or float32 in [0, 1], not {image.dtype}")
    single = image.ndim == 3
    return (batch[None] if single else batch), single, image.dtype == np.uint8


def bicubic(images: np.ndarray, scale: int) -> np.ndarray:
    """PIL's bicubic resize of [N, H, W, C] float32 by scale, per channel in
    float32 ('F' mode), clipped to [0, 1]: uint8 inputs get the interpolation
    OSEDiff's and SeeSR's pipelines apply, without their rounding to uint8."""
    from PIL import Image

    n, h, w, c = images.shape
    out = np.empty((n, h * scale, w * scale, c), np.float32)
    for i in range(n):
        for ch in range(c):
            plane = Image.fromarray(np.ascontiguousarray(images[i, :, :, ch]), mode="F")
            out[i, :, :, ch] = np.asarray(plane.resize((w * scale, h * scale), Image.BICUBIC))
    return np.clip(out, 0, 1)


# ---- image files ----------------------------------------------------------------------
#
# A file becomes a Picture: its pixels as stored ([H, W, C] uint8 or uint16; C is 1 gray,
# 2 gray + alpha, 3 RGB, 4 RGBA), turned upright by its EXIF orientation, with the ICC
# profile and EXIF block that a written result carries on. Pillow reads and writes 8-bit
# files; it reduces 16-bit RGB to 8 bits, so 16-bit PNG goes through pypng and 16-bit TIFF
# through tifffile (both imported only for such files).

ORIENTATION_TAG = 0x0112
FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF",
           ".bmp": "BMP"}
ALPHA_FORMATS = ("PNG", "WEBP", "TIFF")  # Pillow writes BMP alpha but reads it back without
PNG_COMPRESSION = 6  # zlib level: within a few % of 9's size at a fraction of its time


class Picture:
    """An image file's pixels and what must survive a round trip through d3sr.

    pixels: [H, W, C] uint8 or uint16 (C: 1 gray, 2 gray + alpha, 3 RGB, 4 RGBA), upright.
    icc_profile: the embedded ICC profile's bytes, or None.
    exif: the EXIF block (as Pillow's Image.Exif.tobytes() gives it, orientation reset to 1), or None.
    """

    def __init__(self, pixels: np.ndarray, icc_profile: Optional[bytes] = None, exif: Optional[bytes] = None):
        if not isinstance(pixels, np.ndarray):
            raise TypeError(f"pixels must be a numpy.ndarray, not {type(pixels).__name__}")
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        if pixels.ndim != 3 or pixels.shape[2] not in (1, 2, 3, 4) or 0 in pixels.shape:
            raise ValueError(f"pixels must have shape [H, W] or [H, W, C] with C in 1..4, got {pixels.shape}")
        if pixels.dtype not in (np.uint8, np.uint16):
            raise TypeError(f"pixels must be uint8 or uint16, not {pixels.dtype}")
        self.pixels = pixels
        self.icc_profile = icc_profile or None
        self.exif = exif or None

    @property
    def bits(self) -> int:
        return 16 if self.pixels.dtype == np.uint16 else 8

    @property
    def grayscale(self) -> bool:
        return self.pixels.shape[2] <= 2

    @property
    def has_alpha(self) -> bool:
        return self.pixels.shape[2] in (2, 4)

    @property
    def size(self) -> Tuple[int, int]:
        """(width, height), as PIL names it."""
        return self.pixels.shape[1], self.pixels.shape[0]

    def rgb(self) -> np.ndarray:
        """The colour as [H, W, 3] float32 in [0, 1] (gray repeated), what Upscaler.upscale takes."""
        colour = self.pixels[:, :, :1] if self.grayscale else self.pixels[:, :, :3]
        # uint8 / 255 in float32, exactly as Upscaler.upscale converts uint8 itself.
        floats = colour.astype(np.float32) / np.float32(255 if self.bits == 8 else 65535)
        return np.ascontiguousarray(np.broadcast_to(floats, colour.shape[:2] + (3,)))

    def rgb8(self) -> np.ndarray:
        """The colour as [H, W, 3] uint8 (16 bits rounded), for metrics and plots."""
        colour = self.pixels[:, :, :1] if self.grayscale else self.pixels[:, :, :3]
        if self.bits == 16:
            colour = np.round(colour / 257.0).astype(np.uint8)
        return np.ascontiguousarray(np.broadcast_to(colour, colour.shape[:2] + (3,)))

    def alpha(self) -> Optional[np.ndarray]:
        """The alpha channel as [H, W] float32 in [0, 1], or None."""
        if not self.has_alpha:
            return None
        return self.pixels[:, :, -1].astype(np.float32) / np.float32(255 if self.bits == 8 else 65535)

    def __repr__(self) -> str:
        kind = {1: "gray", 2: "gray+alpha", 3: "RGB", 4: "RGBA"}[self.pixels.shape[2]]
        return (f"Picture({self.size[0]}x{self.size[1]} {kind} {self.bits}-bit, "
                f"icc={'yes' if self.icc_profile else 'no'}, exif={'yes' if self.exif else 'no'})")


def read_image(path) -> Picture:
    """Reads an image file into a Picture: upright (EXIF orientation applied), 8 or 16
    bits as stored, alpha and grayscale kept, ICC profile and EXIF kept. Palette images
    become RGB(A), CMYK and other colour spaces RGB (their ICC profile, which described
    the old space, is dropped)."""
    path = _path_argument(path, "path")
    try:
        return _read_image(path)
    except (FileNotFoundError, PermissionError, IsADirectoryError, MemoryError):
        raise
    # Everything else is a bad file: Pillow's parsers raise what the malformed bytes
    # lead them to (OSError, SyntaxError, EOFError, struct.error, the bomb check; a TIFF
    # whose strip offsets are floats made a TypeError, found by fuzz/targets.py).
    except Exception as e:
        raise ValueError(f"{path}: cannot read the image: {type(e).__name__}: {e}") from None


def _read_image(path: str) -> Picture:
    from PIL import Image

    try:
        image = Image.open(path)
    except Image.UnidentifiedImageError:
        if _is_tiff(path):  # e.g. 16-bit gray + alpha, which Pillow has no mode for
            pixels, icc, orientation = _read_tiff(path)
            return Picture(_orient(pixels, orientation), icc, None)
        raise ValueError(f"{path}: not an image file Pillow can read") from None
    with image:
        icc = image.info.get("icc_profile")
        exif = image.getexif()
        orientation = exif.get(ORIENTATION_TAG, 1)
        if _sixteen_bit(image, path):
            pixels = _read_sixteen_bit(path, image.format)
        else:
            pixels, icc = _eight_bit_pixels(image, icc)
        if image.format == "TIFF":
            exif_block = None  # a TIFF's "EXIF" is its own file structure: only its orientation travels
        elif len(exif):
            if ORIENTATION_TAG in exif:
                exif[ORIENTATION_TAG] = 1  # the pixels are upright now
            exif_block = exif.tobytes()
        else:
            exif_block = None
    return Picture(_orient(pixels, orientation), icc, exif_block)


def write_image(path, image, *, quality: int = 95, icc_profile: Optional[bytes] = None,
                exif: Optional[bytes] = None) -> str:
    """Writes a Picture, or an array [H, W] / [H, W, C] (uint8 or uint16; C 1..4), to path,
    the format from its extension (.png .jpg .jpeg .webp .tif .tiff .bmp). 16 bits stay 16 in
    PNG and TIFF; JPEG, WebP and BMP store 8. quality (1..100) is JPEG's and WebP's; PNG uses
    zlib level 6. The ICC profile and EXIF (a Picture's, unless given) go with it, except EXIF
    into TIFF. The file is written under a temporary name in the same folder and renamed when
    complete, so an interrupted write leaves the old file (or none), never a partial one.
    Returns path."""
    path = _path_argument(path, "path")
    picture = image if isinstance(image, Picture) else Picture(image)
    icc_profile = icc_profile if icc_profile is not None else picture.icc_profile
    exif = exif if exif is not None else picture.exif
    fmt = output_format(path)
    check_writable(path, picture)
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) or not 1 <= quality <= 100:
        raise ValueError(f"quality must be an integer from 1 to 100, not {quality!r}")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as f:
            if picture.bits == 16 and fmt == "PNG":
                _write_png16(f, picture.pixels, icc_profile, exif)
            elif picture.bits == 16 and fmt == "TIFF":
                _write_tiff16(f, picture.pixels, icc_profile)
            else:
                _write_pillow(f, fmt, picture.pixels, quality, icc_profile, exif)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp's 0600 would surprise whoever shares the folder
        os.replace(temporary, path)
    except BaseException:  # KeyboardInterrupt too: no half-written file may stay behind
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    return path


def output_format(path: str) -> str:
    """The Pillow format name a path's extension asks for; ValueError for any other."""
    ext = os.path.splitext(str(path))[1].lower()
    if ext not in FORMATS:
        raise ValueError(f"{path}: cannot tell the image format from the extension {ext or '(none)'!r}; "
                         f"use one of {' '.join(sorted(FORMATS))}")
    return FORMATS[ext]


def check_writable(path: str, picture: Picture) -> None:
    """ValueError if path's format cannot hold the picture without losing its alpha channel."""
    fmt = output_format(path)
    if picture.has_alpha and fmt not in ALPHA_FORMATS:
        raise ValueError(f"{path}: {fmt} has no alpha channel and the image has one; write .png, .webp or .tiff")


def upscale_picture(picture: Picture, upscale: Callable[[np.ndarray], np.ndarray]) -> Picture:
    """Super-resolves a Picture's colour with upscale (float32 [H, W, 3] in [0, 1] ->
    float32 [sH, sW, 3] in [0, 1], e.g. lambda x: upscaler.upscale(x, scale=4)) and brings
    the rest along: alpha upscaled by bicubic and put back, grayscale back to one channel
    (BT.601 luma), the same bit depth, ICC profile and EXIF."""
    if not isinstance(picture, Picture):
        raise TypeError(f"picture must be a d3sr.images.Picture, not {type(picture).__name__}")
    h, w = picture.pixels.shape[:2]
    colour = upscale(picture.rgb())
    if not isinstance(colour, np.ndarray) or colour.dtype != np.float32 or colour.ndim != 3 or colour.shape[2] != 3:
        raise ValueError(f"upscale must return float32 [sH, sW, 3], got "
                         f"{getattr(colour, 'dtype', type(colour).__name__)} {getattr(colour, 'shape', '')}")
    scale = colour.shape[0] // h
    if colour.shape[:2] != (h * scale, w * scale) or scale < 1:
        raise ValueError(f"upscale returned {colour.shape[1]}x{colour.shape[0]} for a {w}x{h} image: "
                         f"not an integer multiple of it")
    if picture.grayscale:
        colour = colour @ np.array([0.299, 0.587, 0.114], np.float32)[:, None]  # [sH, sW, 1]
    planes = [colour]
    if picture.has_alpha:
        planes.append(bicubic(picture.alpha()[None, :, :, None], scale)[0])
    out = np.clip(np.concatenate(planes, axis=2) if len(planes) > 1 else colour, 0, 1)
    if picture.bits == 8:
        pixels = np.round(out * np.float32(255)).astype(np.uint8)  # as Upscaler.upscale rounds uint8
    else:
        pixels = np.round(out.astype(np.float64) * 65535).astype(np.uint16)
    return Picture(pixels, picture.icc_profile, picture.exif)


def _path_argument(path, name: str) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a file path (str or os.PathLike), not {type(path).__name__}")
    return os.fspath(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _orient(pixels: np.ndarray, orientation) -> np.ndarray:
    """Pixels [H, W, C] turned upright by an EXIF orientation (1..8; others mean upright)."""
    if orientation in (5, 6, 7, 8):
        pixels = pixels.transpose(1, 0, 2)
    flips = {2: (1,), 3: (0, 1), 4: (0,), 5: (), 6: (1,), 7: (0, 1), 8: (0,)}.get(orientation, ())
    for axis in flips:
        pixels = np.flip(pixels, axis)
    return np.ascontiguousarray(pixels)


def _sixteen_bit(image, path: str) -> bool:
    """Whether the file stores more than 8 bits per channel (Pillow would reduce some to 8)."""
    if image.format == "PNG":
        with open(path, "rb") as f:
            header = f.read(25)
        return len(header) == 25 and header[24] == 16  # IHDR's bit depth
    if image.format == "TIFF":
        bits = max(np.atleast_1d(image.tag_v2.get(258, 1)))              # BitsPerSample
        sample_format = max(np.atleast_1d(image.tag_v2.get(339, 1)))     # 1: unsigned integer
        if bits > 16 or (bits > 8 and sample_format != 1):
            raise ValueError(f"{path}: {bits}-bit {'unsigned' if sample_format == 1 else 'signed or float'} "
                             f"TIFF is not supported; d3sr reads 8- and 16-bit unsigned integer images")
        return bits == 16
    return image.mode.startswith("I;16")


def _read_sixteen_bit(path: str, fmt: str) -> np.ndarray:
    if fmt == "PNG":
        import png

        try:
            width, height, rows, info = png.Reader(filename=path).asDirect()
            pixels = np.vstack([np.asarray(row, np.uint16) for row in rows])
        except png.Error as e:
            raise ValueError(f"{path}: cannot decode the 16-bit PNG: {e}") from None
        return pixels.reshape(height, width, info["planes"])
    if fmt == "TIFF":
        return _read_tiff(path)[0]
    # Pillow's I;16 modes (e.g. 16-bit PGM)
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image).astype(np.uint16)[:, :, None]


def _is_tiff(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(4) in (b"II*\x00", b"MM\x00*")


class _Refused(ValueError):
    """A file d3sr refuses, with a message that names it."""


def _read_tiff(path: str):
    """(pixels [H, W, C] uint16, ICC profile, EXIF orientation) of a 16-bit TIFF's first page, by tifffile."""
    import tifffile
    from PIL import Image

    try:
        with tifffile.TiffFile(path) as tiff:
            if not tiff.pages:
                raise _Refused(f"{path}: the TIFF holds no image")
            page = tiff.pages[0]
            pixel_count = int(page.imagewidth) * int(page.imagelength) * max(1, int(page.imagedepth))
            if Image.MAX_IMAGE_PIXELS and pixel_count > 2 * Image.MAX_IMAGE_PIXELS:  # Pillow's bomb limit
                raise _Refused(f"{path}: {pixel_count} pixels exceed the decompression-bomb limit "
                               f"{2 * Image.MAX_IMAGE_PIXELS} (PIL.Image.MAX_IMAGE_PIXELS)")
            if int(page.photometric) not in (tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.RGB):
                raise _Refused(f"{path}: 16-bit TIFF with photometric {int(page.photometric)} is not supported; "
                               f"d3sr reads gray (1) and RGB (2)")
            pixels = page.asarray()
            separate = int(page.planarconfig) == tifffile.PLANARCONFIG.SEPARATE
            icc = page.iccprofile
            orientation = page.tags.valueof(ORIENTATION_TAG, 1)
    except _Refused:
        raise
    except Exception as e:  # tifffile reports malformed files with many exception types
        raise ValueError(f"{path}: cannot read the TIFF: {type(e).__name__}: {e}") from None
    if pixels.ndim not in (2, 3) or pixels.dtype != np.uint16:
        raise ValueError(f"{path}: expected a 16-bit image [H, W] or [H, W, C], got {pixels.dtype} {pixels.shape}")
    if pixels.ndim == 3 and separate:
        pixels = pixels.transpose(1, 2, 0)
    pixels = pixels if pixels.ndim == 3 else pixels[:, :, None]
    if pixels.shape[2] > 4 or 0 in pixels.shape:
        raise ValueError(f"{path}: expected 16-bit gray, gray+alpha, RGB or RGBA, got {pixels.dtype} "
                         f"{pixels.shape}")
    return pixels, icc, orientation


def _eight_bit_pixels(image, icc: Optional[bytes]):
    """(pixels [H, W, C] uint8, ICC profile still valid for them) from a Pillow image."""
    mode = image.mode
    if mode in ("L", "LA", "RGB", "RGBA"):
        target = mode
    elif mode == "1":
        target = "L"
    elif mode in ("P", "PA"):
        target = "RGBA" if mode == "PA" or "transparency" in image.info else "RGB"
    elif mode in ("La",):
        target = "LA"
    elif mode in ("RGBa",):
        target = "RGBA"
    elif mode in ("RGBX", "YCbCr"):
        target = "RGB"
    elif mode in ("CMYK", "LAB", "HSV"):
        target, icc = "RGB", None  # the profile described the old colour space
    else:
        raise ValueError(f"{image.filename or 'image'}: {mode} images are not supported; d3sr reads 8- and "
                         f"16-bit gray, RGB and their alpha")
    converted = image if mode == target else image.convert(target)
    pixels = np.asarray(converted)
    return (pixels if pixels.ndim == 3 else pixels[:, :, None]), icc


def _write_pillow(f, fmt: str, pixels: np.ndarray, quality: int, icc: Optional[bytes], exif: Optional[bytes]) -> None:
    from PIL import Image

    if pixels.dtype == np.uint16:  # JPEG, WebP and BMP hold 8 bits
        pixels = np.round(pixels / 257.0).astype(np.uint8)
    channels = pixels.shape[2]
    if fmt == "WEBP" and channels <= 2:  # WebP has no gray modes
        pixels = np.concatenate([np.repeat(pixels[:, :, :1], 3, axis=2), pixels[:, :, 1:]], axis=2)
        channels = pixels.shape[2]
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels]
    image = Image.fromarray(np.ascontiguousarray(pixels if channels > 1 else pixels[:, :, 0]), mode=mode)
    options = {}
    if icc:
        options["icc_profile"] = icc
    if exif and fmt != "TIFF":
        options["exif"] = exif
    if fmt in ("JPEG", "WEBP"):
        options["quality"] = quality
    elif fmt == "PNG":
        options["compress_level"] = PNG_COMPRESSION
    elif fmt == "TIFF":
        options["compression"] = "tiff_adobe_deflate"
    image.save(f, format=fmt, **options)


def _write_png16(f, pixels: np.ndarray, icc: Optional[bytes], exif: Optional[bytes]) -> None:
    import io
    import zlib

    import png

    h, w, c = pixels.shape
    writer = png.Writer(w, h, greyscale=c <= 2, alpha=c in (2, 4), bitdepth=16, compression=PNG_COMPRESSION)
    encoded = io.BytesIO()
    writer.write(encoded, pixels.reshape(h, w * c))
    chunks = list(png.Reader(bytes=encoded.getvalue()).chunks())
    extra = []
    if icc:
        extra.append((b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc)))
    if exif:
        extra.append((b"eXIf", exif[6:] if exif.startswith(b"Exif\x00\x00") else exif))
    png.write_chunks(f, chunks[:1] + extra + chunks[1:])  # both belong before the image data, after IHDR


def _write_tiff16(f, pixels: np.ndarray, icc: Optional[bytes]) -> None:
    import io

    import tifffile

    c = pixels.shape[2]
    encoded = io.BytesIO()  # tifffile wants a named file or a BytesIO, not a bare descriptor
    tifffile.imwrite(encoded, pixels if c > 1 else pixels[:, :, 0], photometric="rgb" if c >= 3 else "minisblack",
                     extrasamples=("unassalpha",) if c in (2, 4) else None, compression="zlib",
                     iccprofile=icc)
    f.write(encoded.getvalue())


def list_images(folder) -> list:
    """The image files (by extension: .png .jpg .jpeg .webp .tif .tiff .bmp) in a folder, sorted by name."""
    folder = _path_argument(folder, "folder")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"not a folder: {folder}")
    return sorted(os.path.join(folder, name) for name in os.listdir(folder)
                  if os.path.splitext(name)[1].lower() in FORMATS and os.path.isfile(os.path.join(folder, name)))
