"""Real image bytes for tests: valid files in every accepted format, and the bad inputs we must refuse."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

from PIL import Image


def png(width: int = 32, height: int = 24, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format="PNG")
    return out.getvalue()


def encoded(fmt: str, *, seed: int = 1, size: tuple[int, int] = (40, 30), **save_args) -> bytes:
    """An image with some structure (not a flat colour) in the given Pillow format."""
    img = Image.linear_gradient("L").resize(size).convert("RGB")
    img.putpixel((seed % size[0], 0), (seed % 256, 0, 0))
    out = io.BytesIO()
    img.save(out, format=fmt, **save_args)
    return out.getvalue()


def jpeg_with_orientation(orientation: int, size: tuple[int, int] = (60, 20)) -> bytes:
    img = Image.new("RGB", size, (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    img.save(out, format="JPEG", exif=exif)
    return out.getvalue()


def truncated_jpeg() -> bytes:
    data = encoded("JPEG", size=(256, 256), quality=95)
    return data[: len(data) // 2]


def corrupt_png() -> bytes:
    """A PNG whose signature and header are fine but whose pixel data is garbage."""
    data = bytearray(png(64, 64))
    start = data.index(b"IDAT") + 8
    data[start : start + 40] = b"\xff" * 40
    return bytes(data)


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that declares a huge size: a decompression bomb must be refused by its header."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def gif_two_frames() -> bytes:
    frames = [Image.new("P", (20, 10), i) for i in (1, 2)]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:])
    return out.getvalue()


def zip_of(entries: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=compression) as archive:
        for name, data in entries.items():
            archive.writestr(zipfile.ZipInfo(name), data, compress_type=compression)
    return out.getvalue()
