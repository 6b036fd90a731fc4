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
def checked_image(source: Path | IO[bytes], *, max_pixels: int) -> Iterator[PILImage.Image]:
    """Open an image, refuse a wrong format or too many pixels from its header, then decode it fully (its
    first frame); any problem becomes ImageRejected saying why."""
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
                img.seek(0)  # GIF and multi-page TIFF: the first frame is the image
                img.load()
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


def decode_image(source: IO[bytes], *, max_pixels: int) -> PILImage.Image:
    """A checked, fully decoded, upright copy of an uploaded image (for predictions: nothing is stored)."""
    with checked_image(source, max_pixels=max_pixels) as img:
        return ImageOps.exif_transpose(img).convert("RGB")


def _thumbnail(img: PILImage.Image, size: int) -> bytes:
    """An upright PNG no larger than ``size`` on its longer side (never enlarged)."""
    upright = ImageOps.exif_transpose(img)
    if upright.mode not in {"L", "LA", "RGB", "RGBA"}:
        upright = upright.convert("RGBA" if "A" in upright.getbands() or "transparency" in img.info else "RGB")
    upright.thumbnail((size, size))
    out = io.BytesIO()
    upright.save(out, format="PNG")
    return out.getvalue()
