"""Encoded images from senders camserve does not trust (service requests, `camserve batch` datasets):
which formats are accepted, what is checked on their bytes before Pillow sees them, what decoding
them costs, and a decode that stops when its caller says so.

Formats: PNG, JPEG and WebP (what clients send). Refused, whatever Pillow could read: TIFF (tiles and
strips are sized apart from the image: a 1x1 TIFF with a 16384x16384 tile allocates 768 MiB), BMP
(RLE costs CPU without bound per byte), GIF (frames, LZW) and the rest.

The bytes are walked before Pillow opens them (a few microseconds per chunk or marker):

* PNG: IHDR first, at most ``MAX_PNG_CHUNKS`` chunks and ``MAX_IMAGE_METADATA`` ancillary ones, no
  animation (acTL), IEND present, and at least raw size / 1032 bytes of IDAT (deflate's best ratio):
  a header that claims more pixels than its data can hold is truncated. Ancillary chunks are dropped
  before decoding (text, ICC profiles: never decompressed); pixels do not depend on them.
* JPEG: one Huffman frame (SOF0/1/2: baseline, extended, progressive), at most ``MAX_JPEG_SCANS``
  scans (libjpeg decodes every block once per scan) and ``MAX_IMAGE_METADATA`` APPn/COM segments,
  EOI present, and at least one bit of scan data per 8x8 block (the least any scan spends).
* WebP: a RIFF length the file holds, chunk lengths within it, no animation, at most
  ``MAX_IMAGE_METADATA`` chunks.

Every format: at most ``max_pixels`` pixels. :attr:`ImageHeader.cost` is the peak memory of decoding
and preprocessing the image, in pixels of ``DECODE_BYTES_PER_PIXEL`` bytes: the larger of the
decoder's own holding (a progressive JPEG's coefficients, 128 B per 8x8 block per component, plus the
image; a WebP's RGBA canvas plus the image; a PNG's 1-4 B per pixel plus the RGB copy) and the
preprocessing's 20 B per pixel (RGB, float copy, resize), which come one after the other. For the
formats accepted the decoder holds at most 11 B per pixel, so the cost is the pixel count (measured:
20.1-20.2 B per pixel of peak for 7000x7000 PNG, JPEG and WebP and a 6000x6000 progressive JPEG with
32 scans; docs/operations.md); formats whose decoders hold more per pixel (tiles) are refused.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from camserve.defaults import (
    DECODE_BYTES_PER_PIXEL,
    IMAGE_FORMATS,
    MAX_IMAGE_METADATA,
    MAX_IMAGE_PIXELS,
    MAX_JPEG_SCANS,
    MAX_PNG_CHUNKS,
)
from camserve.errors import InvalidArgumentError, ResourceExhaustedError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Deflate's best compression ratio: no zlib stream inflates to more than this many bytes per byte.
DEFLATE_MAX_RATIO = 1032
#: PNG chunks Pillow's pixels depend on; every other chunk is dropped before decoding.
_PNG_KEPT = (b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND")
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel
_JPEG_FRAMES = {0xC0: "baseline", 0xC1: "extended", 0xC2: "progressive"}
#: A marker after entropy-coded data: 0xFF then neither a stuffed zero, a restart marker nor a fill byte.
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
#: Leading bytes of formats Pillow reads that are refused, for a message that says what was sent.
_REFUSED_MAGIC = (
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"8BPS", "PSD"),
)


@dataclass(frozen=True)
class ImageHeader:
    """An encoded image that passed the checks: its format, size, decode cost and the bytes to decode
    (a PNG without its ancillary chunks)."""

    format: str
    width: int
    height: int
    cost: int  # pixels of DECODE_BYTES_PER_PIXEL bytes that decoding it allocates
    data: bytes

    @property
    def pixels(self) -> int:
        return self.width * self.height


def check_image(
    data: bytes,
    field: str,
    max_pixels: int = MAX_IMAGE_PIXELS,
    formats: tuple[str, ...] = IMAGE_FORMATS,
) -> ImageHeader:
    """The header of encoded image ``data`` once its bytes pass this module's checks;
    InvalidArgumentError naming ``field`` otherwise. Nothing is decompressed or allocated by size."""
    kind = image_format(data)
    if kind is None or kind not in formats:
        what = "not an image in an accepted format" if kind is None else f"{kind} images are not accepted"
        raise InvalidArgumentError(field, f"{what} (accepted: {', '.join(formats)})")
    check = {"PNG": _check_png, "JPEG": _check_jpeg, "WEBP": _check_webp}[kind]
    try:
        header = check(data, field)
    except (struct.error, IndexError):
        raise InvalidArgumentError(
            field, f"the image cannot be decoded (a truncated {kind} header)"
        ) from None
    if header.pixels > max_pixels:
        raise InvalidArgumentError(
            field, f"image is {header.width}x{header.height}; at most {max_pixels} pixels are decoded"
        )
    return header


def decode_checked(
    header: ImageHeader, field: str, stop: Callable[[], None] | None = None, channels: int = 3
) -> Any:
    """A checked image -> a PIL image of the model's ``channels`` (``camserve.images.image_mode``:
    "L", "RGB" or "RGBA"; other counts are refused before anything is decoded). ``stop`` is called
    before each block of input Pillow reads (64 KiB), so a decode whose caller is gone ends there
    by the exception ``stop`` raises."""
    from PIL import Image

    from camserve.images import image_mode

    mode = image_mode(channels, field)
    source: io.BytesIO = _StoppableReader(header.data, stop) if stop is not None else io.BytesIO(header.data)
    try:
        with Image.open(source, formats=(header.format,)) as image:
            if image.size != (header.width, header.height):
                raise InvalidArgumentError(
                    field,
                    f"the image cannot be decoded (its header says {header.width}x{header.height}, "
                    f"the decoder {image.size[0]}x{image.size[1]})",
                )
            image.load()
            return image.convert(mode)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        if isinstance(exc, InvalidArgumentError):
            raise
        raise InvalidArgumentError(field, f"the image cannot be decoded ({exc})") from None


class DecodeBudget:
    """Decode costs (:attr:`ImageHeader.cost`) that the threads of one process may hold at once: a
    decode waits for its share, so concurrent decodes cannot add up to more than ``capacity`` x
    DECODE_BYTES_PER_PIXEL bytes. ``setting`` names the limit in messages; ``alive(stage)`` is called
    while a decode waits and raises to stop the wait (the service: the call is over)."""

    POLL_S = 0.05  # how often a waiting decode calls ``alive``

    def __init__(self, capacity: int, setting: str, alive: Callable[[str], None] | None = None) -> None:
        self.capacity = capacity
        self.setting = setting
        self._alive = alive
        self._free = capacity
        self._changed = threading.Condition()

    @property
    def in_use(self) -> int:
        return self.capacity - self._free

    @contextlib.contextmanager
    def hold(self, pixels: int, field: str) -> Iterator[None]:
        """Hold ``pixels`` of the budget while the block runs (waits for them; raises
        ResourceExhaustedError naming ``field`` when they can never fit)."""
        if pixels > self.capacity:
            raise ResourceExhaustedError(
                f"{field}: decoding takes {pixels} pixels but at most {self.capacity} are decoded at "
                f"once ({self.setting}); send a smaller image"
            )
        with self._changed:
            while self._free < pixels:
                if self._alive is not None:
                    self._alive(f"the wait to decode {field}")
                self._changed.wait(self.POLL_S)
            self._free -= pixels
        try:
            yield
        finally:
            with self._changed:
                self._free += pixels
                self._changed.notify_all()


class _StoppableReader(io.BytesIO):
    def __init__(self, data: bytes, stop: Callable[[], None]) -> None:
        super().__init__(data)
        self._stop = stop

    def read(self, size: int | None = -1, /) -> bytes:
        self._stop()
        return super().read(size)


def image_format(data: bytes) -> str | None:
    """The format encoded ``data`` is in, by its first bytes ("PNG", "GIF", ...); None if unknown."""
    if data.startswith(PNG_SIGNATURE):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((name for magic, name in _REFUSED_MAGIC if data.startswith(magic)), None)


def _bad(field: str, why: str) -> InvalidArgumentError:
    return InvalidArgumentError(field, f"the image cannot be decoded ({why})")


def _cost(pixels: int, decoder_bytes_per_pixel: float) -> int:
    """Peak memory in DECODE_BYTES_PER_PIXEL pixels: the decoder's holding, then the preprocessing's."""
    return math.ceil(pixels * max(DECODE_BYTES_PER_PIXEL, decoder_bytes_per_pixel) / DECODE_BYTES_PER_PIXEL)


# -- PNG --------------------------------------------------------------------------------------------


def _check_png(data: bytes, field: str) -> ImageHeader:
    pos = len(PNG_SIGNATURE)
    kept = [PNG_SIGNATURE]
    chunks = ancillary = idat = 0
    ihdr: tuple[int, ...] | None = None
    while True:
        if pos + 8 > len(data):
            raise _bad(field, "truncated PNG: no IEND chunk")
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        if end > len(data):
            raise _bad(field, f"truncated PNG: the {kind!r} chunk runs past the end of the data")
        chunks += 1
        if chunks > MAX_PNG_CHUNKS:
            raise InvalidArgumentError(field, f"a PNG of more than {MAX_PNG_CHUNKS} chunks is not accepted")
        if ihdr is None:
            if kind != b"IHDR" or length != 13:
                raise _bad(field, "a PNG must start with its IHDR chunk")
            ihdr = struct.unpack_from(">IIBBBBB", data, pos + 8)
        elif kind == b"acTL":
            raise InvalidArgumentError(field, "animated PNGs are not accepted: send one frame")
        elif kind == b"IDAT":
            idat += length
        elif not kind[0] & 0x20 and kind not in _PNG_KEPT:  # an unknown critical chunk
            raise _bad(field, f"unknown critical PNG chunk {kind!r}")
        if kind[0] & 0x20:
            ancillary += 1
            if ancillary > MAX_IMAGE_METADATA:
                raise InvalidArgumentError(
                    field, f"a PNG with more than {MAX_IMAGE_METADATA} ancillary chunks is not accepted"
                )
        if kind in _PNG_KEPT:
            kept.append(data[pos:end])
        pos = end
        if kind == b"IEND":
            break
    width, height, depth, colour, _, _, interlace = ihdr
    channels = _PNG_CHANNELS.get(colour)
    if width == 0 or height == 0 or channels is None or depth not in (1, 2, 4, 8, 16):
        raise _bad(field, f"invalid PNG header ({width}x{height}, colour type {colour}, depth {depth})")
    raw = height * (1 + math.ceil(width * channels * depth / 8))
    needed = raw // DEFLATE_MAX_RATIO
    if idat < needed:
        raise _bad(
            field,
            f"truncated PNG: {idat} bytes of image data, but a {width}x{height} image needs at least "
            f"{needed}",
        )
    wide = depth == 16 or colour in (4, 6)  # Pillow holds these at 4 B per pixel (RGBA, LA, I;16)
    held = (4 if wide else 3) + 3  # the decoded image and its RGB copy
    return ImageHeader("PNG", width, height, _cost(width * height, held), b"".join(kept))


# -- JPEG -------------------------------------------------------------------------------------------


def _check_jpeg(data: bytes, field: str) -> ImageHeader:
    pos = 2
    scans = metadata = scan_bytes = 0
    frame: tuple[str, int, int, list[tuple[int, int]]] | None = None
    while True:
        if pos + 2 > len(data) or data[pos] != 0xFF:
            raise _bad(field, "truncated JPEG: no EOI marker")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # stand-alone markers
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", data, pos + 2)
        end = pos + 2 + length
        if length < 2 or end > len(data):
            raise _bad(field, "truncated JPEG: a segment runs past the end of the data")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if marker not in _JPEG_FRAMES:
                raise InvalidArgumentError(
                    field, f"JPEG coding SOF{marker - 0xC0} is not accepted (baseline, extended, progressive)"
                )
            if frame is not None:
                raise _bad(field, "a JPEG with more than one frame")
            frame = _jpeg_frame(data, pos + 4, _JPEG_FRAMES[marker], field)
        elif 0xE0 <= marker <= 0xEF or marker == 0xFE:
            metadata += 1
            if metadata > MAX_IMAGE_METADATA:
                raise InvalidArgumentError(
                    field, f"a JPEG with more than {MAX_IMAGE_METADATA} APPn/COM segments is not accepted"
                )
        elif marker == 0xDA:
            if frame is None:
                raise _bad(field, "a JPEG scan before its frame header")
            scans += 1
            if scans > MAX_JPEG_SCANS:
                raise InvalidArgumentError(
                    field, f"a JPEG of more than {MAX_JPEG_SCANS} scans is not accepted"
                )
            found = _JPEG_MARKER.search(data, end)
            if found is None:
                raise _bad(field, "truncated JPEG: scan data without an EOI marker")
            scan_bytes += found.start() - end
            end = found.start()
        pos = end
    if frame is None or scans == 0:
        raise _bad(field, "a JPEG without a frame or a scan")
    coding, width, height, blocks = frame
    total_blocks = sum(count for count, _ in blocks)
    if scan_bytes * 8 < total_blocks:
        raise _bad(
            field,
            f"truncated JPEG: {scan_bytes} bytes of scan data, but a {width}x{height} image needs at "
            f"least {math.ceil(total_blocks / 8)}",
        )
    held = 4.0 + 3  # the decoded image (CMYK: 4 B per pixel) and its RGB copy
    if coding == "progressive":  # libjpeg holds every block's 64 coefficients (int16) until the end
        held += 128 * total_blocks / (width * height)
    return ImageHeader("JPEG", width, height, _cost(width * height, held), data)


def _jpeg_frame(
    data: bytes, pos: int, coding: str, field: str
) -> tuple[str, int, int, list[tuple[int, int]]]:
    """(coding, width, height, [(8x8 blocks, component id)] per component) of a SOF segment."""
    precision, height, width, count = struct.unpack_from(">BHHB", data, pos)
    if height == 0 or width == 0 or count not in (1, 3, 4) or precision not in (8, 12):
        raise _bad(field, f"invalid JPEG frame ({width}x{height}, {count} components)")
    sampling = [data[pos + 6 + 3 * c + 1] for c in range(count)]
    h = [s >> 4 for s in sampling]
    v = [s & 15 for s in sampling]
    if min(h + v) < 1 or max(h + v) > 4:
        raise _bad(field, "invalid JPEG sampling factors")
    mcu_w, mcu_h = 8 * max(h), 8 * max(v)
    mcus = math.ceil(width / mcu_w) * math.ceil(height / mcu_h)
    blocks = [(mcus * h[c] * v[c], data[pos + 6 + 3 * c]) for c in range(count)]
    return coding, width, height, blocks


# -- WebP -------------------------------------------------------------------------------------------


def _check_webp(data: bytes, field: str) -> ImageHeader:
    (riff,) = struct.unpack_from("<I", data, 4)
    end = 8 + riff
    if end > len(data) or riff < 4:
        raise _bad(field, f"truncated WebP: the RIFF header says {end} bytes, the data holds {len(data)}")
    pos = 12
    chunks = 0
    size: tuple[int, int] | None = None
    bitstream: tuple[int, int] | None = None
    while pos < end:
        if pos + 8 > end:
            raise _bad(field, "truncated WebP: a chunk header past the RIFF length")
        kind, length = struct.unpack_from("<4sI", data, pos)
        body = pos + 8
        if body + length > end:
            raise _bad(field, f"truncated WebP: the {kind!r} chunk runs past the end of the data")
        chunks += 1
        if chunks > MAX_IMAGE_METADATA + 2:
            raise InvalidArgumentError(
                field, f"a WebP with more than {MAX_IMAGE_METADATA} metadata chunks is not accepted"
            )
        if kind in (b"ANIM", b"ANMF"):
            raise InvalidArgumentError(field, "animated WebPs are not accepted: send one frame")
        if kind == b"VP8X":
            flags = data[body]
            if flags & 0x02:
                raise InvalidArgumentError(field, "animated WebPs are not accepted: send one frame")
            width = 1 + int.from_bytes(data[body + 4 : body + 7], "little")
            height = 1 + int.from_bytes(data[body + 7 : body + 10], "little")
            size = (width, height)
        elif kind == b"VP8 ":
            if data[body + 3 : body + 6] != b"\x9d\x01\x2a":
                raise _bad(field, "a VP8 chunk without a key frame")
            w, h = struct.unpack_from("<HH", data, body + 6)
            bitstream = (w & 0x3FFF, h & 0x3FFF)
        elif kind == b"VP8L":
            if data[body] != 0x2F:
                raise _bad(field, "a VP8L chunk without its signature")
            (bits,) = struct.unpack_from("<I", data, body + 1)
            bitstream = (1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF))
        pos = body + length + (length & 1)
    if bitstream is None:
        raise _bad(field, "a WebP without image data")
    width, height = size or bitstream
    if width == 0 or height == 0 or bitstream[0] > width or bitstream[1] > height:
        raise _bad(field, f"invalid WebP size ({width}x{height}, image {bitstream[0]}x{bitstream[1]})")
    held = 4 + 4 + 3  # libwebp's RGBA canvas, Pillow's RGBA image, the RGB copy
    return ImageHeader("WEBP", width, height, _cost(width * height, held), data)
