#!/usr/bin/env python
"""Peak memory and CPU of checking, decoding and preprocessing one big image (one per process), to
check the decode cost of camserve/encoded_images.py against what the process really holds.

    python bench/decode_cost.py png-rgb 7000          # kinds: png-rgb png-rgba jpeg jpeg-prog-N webp

Prints the VmHWM growth (Linux /proc; the high-water mark is reset after the image is built) in MiB
and per pixel, the cost the pixel budget holds, and the CPU seconds.
"""

from __future__ import annotations

import argparse
import io
import re
import resource
from pathlib import Path

from PIL import Image

from camserve.encoded_images import check_image, decode_checked
from camserve.images import preprocess


def high_water_mib() -> float:
    match = re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text())
    assert match
    return int(match.group(1)) / 1024


def build(kind: str, side: int) -> bytes:
    buffer = io.BytesIO()
    if kind in ("png-rgb", "png-rgba"):
        Image.new("RGBA" if kind == "png-rgba" else "RGB", (side, side)).save(buffer, format="PNG")
    elif kind == "jpeg":
        Image.new("RGB", (side, side)).save(buffer, format="JPEG")
    elif kind.startswith("jpeg-prog-"):  # 4:4:4 progressive, last scan repeated up to N scans
        Image.new("RGB", (side, side)).save(buffer, format="JPEG", progressive=True, subsampling=0)
        data = buffer.getvalue()
        last = data[data.rfind(b"\xff\xda") : -2]
        return data[:-2] + last * (int(kind.rsplit("-", 1)[1]) - data.count(b"\xff\xda")) + b"\xff\xd9"
    elif kind == "webp":
        Image.new("RGB", (side, side)).save(buffer, format="WEBP", lossless=True)
    else:
        raise SystemExit(f"unknown kind {kind!r}")
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind")
    parser.add_argument("side", type=int)
    args = parser.parse_args()
    data = build(args.kind, args.side)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := the current RSS
    base = high_water_mib()
    before = resource.getrusage(resource.RUSAGE_SELF)
    header = check_image(data, "image")
    preprocess(decode_checked(header, "image"), [3, 64, 64], [0.5] * 3, [0.5] * 3)
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    grown = high_water_mib() - base
    print(
        f"{args.kind} {args.side}x{args.side}: {len(data) / 1024:.0f} KiB, peak +{grown:.0f} MiB "
        f"({grown * 2**20 / header.pixels:.1f} B/pixel), cost {header.cost} pixels "
        f"({header.cost * 20 / 2**20:.0f} MiB at 20 B), CPU {cpu:.2f} s"
    )


if __name__ == "__main__":
    main()
