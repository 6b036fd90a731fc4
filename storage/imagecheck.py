"""Decode and validate one image file with Pillow, and make its thumbnail.

Every check happens before anything is stored: the header is read first, so a decompression
bomb is refused by its declared size without allocating its pixels; then the whole image is
decoded, so truncated or corrupt data is caught.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from PIL import Image as PILImage
from PIL import ImageFile, ImageOps, UnidentifiedImageError

ALLOWED_FORMATS = {"PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF"}
EXIF_ORIENTATION = 0x0112
# Reduced decoding keeps at least this many pixels per model input pixel on each side (as Pillow's
# ``reducing_gap``): the model's bilinear resize then gives what it gives on the full-size image.
REDUCING_GAP = 3
BAND_ROWS = 512
_UPRIGHT = {
    2: PILImage.Transpose.FLIP_LEFT_RIGHT,
    3: PILImage.Transpose.ROTATE_180,
    4: PILImage.Transpose.FLIP_TOP_BOTTOM,
    5: PILImage.Transpose.TRANSPOSE,
    6: PILImage.Transpose.ROTATE_270,
    7: PILImage.Transpose.TRANSVERSE,
    8: PILImage.Transpose.ROTATE_90,
}

# Our own pixel limit is checked explicitly; Pillow's global guard stays as a second line of defence.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageRejected(Exception):
    """The file is not an image we accept; the message says why."""


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    format: str
    exif_orientation: int | None
    thumbnail_png: bytes | None  # None: the original already is a fine thumbnail (a small upright PNG)


@contextmanager
def opened_image(
    source: Path | IO[bytes], *, max_pixels: int, draft_size: int | None = None
) -> Iterator[PILImage.Image]:
    """Open an image and refuse a wrong format or too many pixels from its header, without decoding it; any
    problem, also while the caller decodes it in the block, becomes ImageRejected saying why.

    With ``draft_size``, a JPEG is set to decode at the smallest scale (1/2 to 1/8) that keeps at least that
    many pixels on each side; other formats have no reduced decoding.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", PILImage.DecompressionBombWarning)
        try:
            with PILImage.open(source) as img:
                fmt = img.format or "unknown"
                if fmt not in ALLOWED_FORMATS:
                    raise ImageRejected(
                        f"format {fmt} is not accepted; use one of {', '.join(sorted(ALLOWED_FORMATS))}"
                    )
                width, height = img.size
                if width <= 0 or height <= 0:
                    raise ImageRejected(f"image has no pixels ({width}x{height})")
                if width * height > max_pixels:
                    raise ImageRejected(
                        f"image is {width}x{height} = {width * height:,} pixels, over the limit of "
                        f"{max_pixels:,} (LABELWHEEL_MAX_IMAGE_PIXELS)"
                    )
                if draft_size is not None:
                    img.draft(None, (draft_size, draft_size))
                yield img
        except ImageRejected:
            raise
        except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning) as exc:
            raise ImageRejected(
                f"decompression bomb refused ({exc}); the limit is LABELWHEEL_MAX_IMAGE_PIXELS"
            ) from None
        except UnidentifiedImageError:
            raise ImageRejected("not an image file Pillow can read (corrupt, or another file type)") from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageRejected(f"corrupt or truncated image data: {exc}") from None


@contextmanager
def checked_image(source: Path | IO[bytes], *, max_pixels: int) -> Iterator[PILImage.Image]:
    """An image checked from its header (``opened_image``), then decoded fully (its first frame), so truncated
    or corrupt data is refused too."""
    with opened_image(source, max_pixels=max_pixels) as img:
        img.seek(0)  # GIF and multi-page TIFF: the first frame is the image
        img.load()
        yield img


def inspect_image(path: Path, *, max_pixels: int, thumbnail_size: int) -> ImageInfo:
    """Validate the image at ``path`` and return its facts and a PNG thumbnail; raise ImageRejected.

    A PNG that is already upright and no larger than a thumbnail serves as its own thumbnail.
    """
    with checked_image(path, max_pixels=max_pixels) as img:
        orientation = img.getexif().get(EXIF_ORIENTATION)
        width, height = img.size
        upright_small_png = img.format == "PNG" and max(width, height) <= thumbnail_size and orientation in (None, 1)
        thumbnail = None if upright_small_png else _thumbnail(img, thumbnail_size)
        return ImageInfo(
            width=width,
            height=height,
            format=img.format or "unknown",
            exif_orientation=int(orientation) if isinstance(orientation, int) else None,
            thumbnail_png=thumbnail,
        )


def decoded_pixels(source: IO[bytes], *, max_pixels: int, size: int) -> int:
    """How many pixels ``decode_for_model`` will decode for this image, read from its header alone."""
    with opened_image(source, max_pixels=max_pixels, draft_size=size * REDUCING_GAP) as img:
        return img.width * img.height


def decode_for_model(source: IO[bytes], *, max_pixels: int, size: int) -> PILImage.Image:
    """A checked, upright RGB copy of an uploaded image, no larger than a ``size`` x ``size`` model input needs.

    An image up to ``REDUCING_GAP`` times the input size comes back whole, as training decodes it. A larger JPEG
    decodes at a reduced scale; other formats (PNG above all) can only be decoded whole, so the image is decoded
    in its own mode (one byte a pixel for greyscale), then converted and reduced by whole factors a band of rows
    at a time, so memory peaks at about one decoded image, never at its full-size RGB copy. A reduced image comes
    back resized to the input size, as Pillow's ``resize(reducing_gap=REDUCING_GAP)`` makes it.
    """
    with opened_image(source, max_pixels=max_pixels, draft_size=size * REDUCING_GAP) as img:
        img.seek(0)  # GIF and multi-page TIFF: the first frame is the image
        img.load()
        orientation = img.getexif().get(EXIF_ORIENTATION)
        width, height = img.size
        fx, fy = max(1, width // (size * REDUCING_GAP)), max(1, height // (size * REDUCING_GAP))
        rgb = _reduced_rgb(img, (fx, fy))
    if (fx, fy) != (1, 1):
        # The last block of a reduction may be partial: the box keeps the geometry exact, as Pillow does.
        rgb = rgb.resize((size, size), PILImage.Resampling.BILINEAR, box=(0, 0, width / fx, height / fy))
    method = _UPRIGHT.get(orientation) if isinstance(orientation, int) else None
    return rgb.transpose(method) if method is not None else rgb


def _reduced_rgb(img: PILImage.Image, factors: tuple[int, int]) -> PILImage.Image:
    """``img.convert("RGB").reduce(factors)``, made a band of rows at a time so no full-size RGB copy exists."""
    width, height = img.size
    band = factors[1] * max(1, BAND_ROWS // factors[1])  # whole blocks per band: the same result as one reduce
    out = PILImage.new("RGB", (-(-width // factors[0]), -(-height // factors[1])))
    for top in range(0, height, band):
        part = img.crop((0, top, width, min(top + band, height))).convert("RGB")
        out.paste(part.reduce(factors) if factors != (1, 1) else part, (0, top // factors[1]))
    return out


def _thumbnail(img: PILImage.Image, size: int) -> bytes:
    """An upright PNG no larger than ``size`` on its longer side (never enlarged)."""
    upright = ImageOps.exif_transpose(img)
    if upright.mode not in {"L", "LA", "RGB", "RGBA"}:
        upright = upright.convert("RGBA" if "A" in upright.getbands() or "transparency" in img.info else "RGB")
    upright.thumbnail((size, size))
    out = io.BytesIO()
    upright.save(out, format="PNG")
    return out.getvalue()
