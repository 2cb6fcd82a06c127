"""Hostile encoded images (issue 26): small files whose decode would cost far more than their size,
built with Pillow and a few hand-written chunks. The soak's hostile mix (``bench/soak.py``) and the
tests (``tests/service/test_hostile_decoding.py``, ``tests/batch/test_batch_hostile.py``) use them.

``HOSTILE_IMAGES``: name -> (builder, what the checks say): every one is refused before decoding.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib
from collections.abc import Callable

import numpy as np
from PIL import Image


def png(width: int, height: int, mode: str = "RGB", **save: object) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height)).save(buffer, format="PNG", **save)
    return buffer.getvalue()


def noise_jpeg(width: int, height: int, seed: int = 0, **save: object) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", **save)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def ztxt_png(chunks: int, inflated: int = 1 << 20) -> bytes:
    """An 8x8 PNG with ``chunks`` zTXt chunks, each inflating to ``inflated`` bytes of text."""
    plain = png(8, 8)
    text = png_chunk(b"zTXt", b"comment\x00\x00" + zlib.compress(b"\x00" * inflated, 9))
    return plain[:33] + text * chunks + plain[33:]  # after IHDR (8 + 25 bytes)


def thin_png(side: int) -> bytes:
    """A PNG whose header says side x side (grayscale) but whose data holds 100 pixels' worth."""
    ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
    idat = png_chunk(b"IDAT", zlib.compress(b"\x00" * 100))
    return b"\x89PNG\r\n\x1a\n" + ihdr + idat + png_chunk(b"IEND", b"")


def thin_jpeg(side: int) -> bytes:
    """A 16x16 baseline JPEG whose frame header is rewritten to say side x side."""
    data = bytearray(noise_jpeg(16, 16))
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, side, side)
    return bytes(data)


def many_scans_jpeg(scans: int, side: int = 64) -> bytes:
    """A progressive JPEG whose last scan is repeated until it has ``scans`` scans (libjpeg decodes
    every block once per scan: CPU without bound per byte)."""
    buffer = io.BytesIO()
    Image.new("RGB", (side, side)).save(buffer, format="JPEG", progressive=True)
    data = buffer.getvalue()
    last = data[data.rfind(b"\xff\xda") : -2]
    return data[:-2] + last * (scans - data.count(b"\xff\xda")) + b"\xff\xd9"


@functools.cache
def tiled_tiff(tile: int, width: int = 1, height: int = 1) -> bytes:
    """A width x height RGB TIFF with one deflated tile x tile tile: the decoder allocates the tile."""
    raw = zlib.compressobj(9)
    zeros = b"\x00" * (tile * 3 * 64)
    body = b"".join(raw.compress(zeros) for _ in range(tile // 64)) + raw.flush()
    tags = [
        (256, 4, 1, width),  # ImageWidth
        (257, 4, 1, height),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample (one value for all samples)
        (259, 3, 1, 8),  # Compression: deflate
        (262, 3, 1, 2),  # Photometric: RGB
        (277, 3, 1, 3),  # SamplesPerPixel
        (322, 4, 1, tile),  # TileWidth
        (323, 4, 1, tile),  # TileLength
        (324, 4, 1, 8),  # TileOffsets: right after the header
        (325, 4, 1, len(body)),  # TileByteCounts
    ]
    ifd_at = 8 + len(body)
    ifd = struct.pack("<H", len(tags)) + b"".join(
        struct.pack("<HHII", tag, kind, count, value)
        if kind == 4
        else struct.pack("<HHIHH", tag, kind, count, value, 0)
        for tag, kind, count, value in tags
    )
    return b"II*\x00" + struct.pack("<I", ifd_at) + body + ifd + b"\x00\x00\x00\x00"


def rle8_bmp(width: int = 4096, height: int = 4096, codes: int = 14_000) -> bytes:
    """A BMP (RLE8) whose data is ``codes`` end-of-line codes: each costs the decoder a row."""
    data = b"\x00\x00" * codes + b"\x00\x01"
    palette = b"\x00\x00\x00\x00" * 256
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(data), 2835, 2835, 256, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(data), 0, 0, offset) + info + palette + data


def animated_png(frames: int = 3) -> bytes:
    plain = png(8, 8)
    actl = png_chunk(b"acTL", struct.pack(">II", frames, 0))
    return plain[:33] + actl + plain[33:]


def gif(frames: int = 2) -> bytes:
    buffer = io.BytesIO()
    images = [Image.new("P", (8, 8), i) for i in range(frames)]
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:])
    return buffer.getvalue()


#: name -> (builder, a phrase of the refusal). Small on the wire (each at most a few hundred KiB).
HOSTILE_IMAGES: dict[str, tuple[Callable[[], bytes], str]] = {
    "tiled-tiff-4096": (functools.partial(tiled_tiff, 4096), "TIFF images are not accepted"),
    "bmp-rle8-eol": (rle8_bmp, "BMP images are not accepted"),
    "gif-frames": (gif, "GIF images are not accepted"),
    "jpeg-5000-scans": (functools.partial(many_scans_jpeg, 5000), "more than 32 scans"),
    "png-65-ztxt": (functools.partial(ztxt_png, 65), "more than 64 ancillary chunks"),
    "png-7000-thin": (functools.partial(thin_png, 7000), "truncated PNG"),
    "jpeg-7000-thin": (functools.partial(thin_jpeg, 7000), "truncated JPEG"),
    "png-animated": (animated_png, "animated PNGs are not accepted"),
}
