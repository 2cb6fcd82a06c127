"""The results of ``camserve bench``: a table on the terminal, CSV and JSON files, and a
latency-vs-throughput plot (PNG)."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from camserve.loadgen.sweep import LevelResult


def row(result: LevelResult) -> dict[str, Any]:
    """One flat row per level (the CSV's columns; the JSON adds the nested details)."""
    m = result.measured
    out: dict[str, Any] = {
        "mode": result.mode,
        "level": result.level,
        "arrivals": result.arrivals,
        "processes": result.processes,
        "stable": result.stable,
        "throughput": round(m.throughput, 2),
        "mean_ms": round(m.mean_ms, 3),
        "p50_ms": round(m.p50_ms, 3),
        "p90_ms": round(m.p90_ms, 3),
        "p95_ms": round(m.p95_ms, 3),
        "p99_ms": round(m.p99_ms, 3),
        "max_ms": round(m.max_ms, 3),
        "requests": m.requests,
        "errors": ";".join(f"{code}={n}" for code, n in m.errors.items()),
        "sent": result.sent,
        "generator_cores": round(result.generator_cores, 3),
    }
    s = result.server_measured
    if s is not None and result.server_total is not None:
        out.update(
            server_requests=result.server_total.requests,
            server_queue_ms=round(s.queue_ms, 3),
            server_compute_ms=round(s.compute_ms, 3),
            server_batch_size=round(s.batch_size, 2),
        )
        if s.cpu_s > 0:  # Triton's metrics have no process CPU
            out["server_cpu_s_per_image"] = round(s.cpu_s_per_image, 6)
    for name, value in result.in_process.items():
        out[f"in_process_{name}"] = round(value, 6) if isinstance(value, float) else value
    if result.in_process.get("images_per_s"):
        out["throughput_ratio"] = round(m.throughput / result.in_process["images_per_s"], 3)
        if s is not None and s.cpu_s > 0 and result.in_process.get("cpu_s_per_image"):
            out["cpu_ratio"] = round(s.cpu_s_per_image / result.in_process["cpu_s_per_image"], 3)
    return out


def table(results: Sequence[LevelResult]) -> str:
    """A fixed-width table; server and in-process columns when they were measured."""
    columns = [
        ("level", "{level_label}"),
        ("img/s", "{throughput:.1f}"),
        ("p50 ms", "{p50_ms:.2f}"),
        ("p90 ms", "{p90_ms:.2f}"),
        ("p95 ms", "{p95_ms:.2f}"),
        ("p99 ms", "{p99_ms:.2f}"),
        ("max ms", "{max_ms:.2f}"),
        ("errors", "{errors_label}"),
        ("gen cores", "{generator_cores:.2f}"),
    ]
    rows = []
    for result in results:
        r = row(result)
        r["level_label"] = (
            f"c={result.level:g}" if result.mode == "closed" else f"{result.level:g}/s {result.arrivals}"
        ) + ("" if result.stable else " (unstable)")
        r["errors_label"] = r["errors"] or "0"
        rows.append(r)
    if any("server_queue_ms" in r for r in rows):
        columns += [
            ("queue ms", "{server_queue_ms:.2f}"),
            ("compute ms", "{server_compute_ms:.2f}"),
            ("batch", "{server_batch_size:.1f}"),
            ("srv CPU ms/img", "{server_cpu_ms:.3f}"),
        ]
        for r in rows:
            if "server_cpu_s_per_image" in r:
                r["server_cpu_ms"] = r["server_cpu_s_per_image"] * 1e3
    if any("throughput_ratio" in r for r in rows):
        columns += [
            ("in-proc img/s", "{in_process_images_per_s:.1f}"),
            ("ratio", "{throughput_ratio:.2f}"),
        ]
        if any("cpu_ratio" in r for r in rows):
            columns.append(("CPU ratio", "{cpu_ratio:.2f}"))
    cells = [[fmt.format(**r) if _has(r, fmt) else "-" for _, fmt in columns] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (h, _) in enumerate(columns)]
    lines = ["  ".join(h.rjust(w) for (h, _), w in zip(columns, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(cell, widths, strict=True)) for cell in cells]
    return "\n".join(lines)


def _has(r: dict[str, Any], fmt: str) -> bool:
    return fmt[1:].split(":")[0].rstrip("}") in r


def write_csv(results: Sequence[LevelResult], path: str) -> Path:
    rows = [row(r) for r in results]
    names = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)


def write_json(results: Sequence[LevelResult], path: str, settings: dict[str, Any]) -> Path:
    levels = []
    for result in results:
        detail = asdict(result)
        detail["generator_cores"] = result.generator_cores
        detail["summary"] = row(result)
        levels.append(detail)
    Path(path).write_text(json.dumps({"settings": settings, "levels": levels}, indent=2) + "\n")
    return Path(path)


def plot(results: Sequence[LevelResult], path: str, title: str) -> Path:
    """p50 and p99 latency against throughput, one line per mode (closed / open loop)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mode in ("closed", "open"):
        chosen = [r for r in results if r.mode == mode]
        if not chosen:
            continue
        x = [r.measured.throughput for r in chosen]
        for name, style in (("p50", "o-"), ("p99", "s--")):
            y = [getattr(r.measured, f"{name}_ms") for r in chosen]
            ax.plot(x, y, style, label=f"{mode} loop {name}")
        for r, xi in zip(chosen, x, strict=True):
            label = f"c={r.level:g}" if mode == "closed" else f"{r.level:g}/s"
            ax.annotate(label, (xi, r.measured.p50_ms), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("throughput (images/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
