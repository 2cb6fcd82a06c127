"""`camserve bench` against a real server: its counts agree with the server's, percentiles are ordered,
failures are counted by status code, the files are written, and bad flags are one line and exit 2."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from camserve.cli import main
from camserve.loadgen.drivers import split_load
from camserve.loadgen.local_server import free_port
from camserve.loadgen.server_metrics import difference, parse
from camserve.loadgen.stats import figures, stable

# Short levels: ~1.5 s of load each, bounded by --max-windows.
QUICK = ["--warmup-s", "0.5", "--window-s", "0.5", "--stable-windows", "2", "--max-windows", "3"]


def bench(server: str, metrics_url: str, tmp_path: Path, *flags: str) -> dict:
    """Run `camserve bench` in its own process; its JSON report."""
    out = tmp_path / "bench.json"
    argv = [sys.executable, "-m", "camserve.cli", "bench", "--server", server, "--metrics-url", metrics_url]
    argv += [*QUICK, "--json", str(out), *flags]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(out.read_text())


def check_consistent(level: dict) -> None:
    m = level["measured"]
    assert m["p50_ms"] <= m["p90_ms"] <= m["p95_ms"] <= m["p99_ms"] <= m["max_ms"]
    assert 0 < m["mean_ms"] <= m["max_ms"]
    # Every request the clients got an answer to was counted by the server, and nothing else.
    assert level["sent"] == level["server_total"]["requests"]
    assert level["generator_cpu_s"] > 0


def test_closed_and_open_loop_counts_agree_with_the_server(metrics_server, tmp_path: Path) -> None:
    server, metrics_url = metrics_server
    csv_path = tmp_path / "bench.csv"
    report = bench(
        server.address,
        metrics_url,
        tmp_path,
        "--concurrency", "3", "--request-rate", "30", "--arrivals", "poisson", "--processes", "2",
        "--csv", str(csv_path), "--plot", str(tmp_path / "bench.png"), "--in-process",
    )  # fmt: skip
    closed, opened = report["levels"]
    assert (closed["mode"], closed["level"], closed["processes"]) == ("closed", 3, 2)
    assert (opened["mode"], opened["level"], opened["arrivals"]) == ("open", 30, "poisson")
    for level in (closed, opened):
        check_consistent(level)
        assert level["sent_errors"] == {}
        assert level["measured"]["requests"] > 0
        server_measured = level["server_measured"]
        assert server_measured["images"] > 0 and server_measured["batch_size"] >= 1
        assert server_measured["compute_ms"] > 0
        in_process = level["in_process"]
        assert in_process["images_per_s"] > 0 and in_process["batch_size"] >= 1
    # An open loop at 30/s sends about 30 requests a second, whatever the server does.
    assert 15 < opened["measured"]["throughput"] < 45
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["mode"] for r in rows] == ["closed", "open"]
    assert float(rows[0]["throughput"]) == closed["summary"]["throughput"]
    assert float(rows[0]["throughput_ratio"]) == closed["summary"]["throughput_ratio"]
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("api", ["stream", "oip"])
def test_other_apis(metrics_server, tmp_path: Path, api: str) -> None:
    server, metrics_url = metrics_server
    report = bench(
        server.address, metrics_url, tmp_path, "--api", api, "--concurrency", "2",
        "--method", "gradcam", "--method", "gradcam++", "--target", "-1", "--image-size", "48x40",
    )  # fmt: skip
    (level,) = report["levels"]
    check_consistent(level)
    assert level["sent_errors"] == {}
    assert level["measured"]["requests"] > 0
    assert report["settings"]["images"] == "generated 48x40"


def test_errors_are_counted_by_status_code(metrics_server, tmp_path: Path) -> None:
    server, metrics_url = metrics_server
    report = bench(server.address, metrics_url, tmp_path, "--model", "no-such-model", "--concurrency", "2")
    (level,) = report["levels"]
    assert level["sent"] > 0
    assert level["sent_errors"] == {"NOT_FOUND": level["sent"]}
    assert level["measured"]["requests"] == 0 and level["measured"]["errors"]["NOT_FOUND"] > 0
    assert level["server_total"]["requests"] == level["sent"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--concurrency", "0"], "--concurrency: values must be > 0"),
        (["--request-rate", "fast"], "--request-rate: expected comma-separated numbers"),
        (["--tolerance", "2"], "--tolerance: must be a fraction"),
        (["--stable-windows", "4", "--max-windows", "3"], "--max-windows: must be >= --stable-windows"),
        (["--server", "127.0.0.1:1", "--models", "m"], "--models: starts a server here"),
        (["--tls"], "--tls: applies only with --server"),
        (["--image-size", "big", "--server", "127.0.0.1:1"], "image-size: expected HxW"),
        (["--json", "/no/such/dir/x.json"], "--json: directory /no/such/dir does not exist"),
    ],
)
def test_bad_flags_are_one_line_and_exit_2(flags: list[str], message: str, capsys) -> None:
    assert main(["bench", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert message in err


def test_unreachable_server_is_one_line(capsys) -> None:
    assert main(["bench", "--server", f"127.0.0.1:{free_port()}", "--timeout-s", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "UNAVAILABLE" in err, err


def test_figures_and_stability() -> None:
    records = [(0.0, 0.010, "OK"), (0.0, 0.020, "OK"), (0.5, 0.530, "OK"), (0.1, 0.2, "NOT_FOUND")]
    f = figures(records, seconds=2.0)
    assert f.requests == 3 and f.throughput == 1.5
    assert (f.p50_ms, f.max_ms) == pytest.approx((20.0, 30.0))
    assert f.errors == {"NOT_FOUND": 1}
    assert stable([100, 50, 98, 102, 100], count=3, tolerance=0.05)
    assert not stable([100, 80, 100], count=3, tolerance=0.1)
    assert not stable([100, 100], count=3, tolerance=0.1)
    assert split_load("closed", 5, 2) == [(3, 0.0), (2, 0.0)]
    assert split_load("closed", 1, 4) == [(1, 0.0)]
    assert split_load("open", 50, 2) == [(0, 25.0), (0, 25.0)]


def test_server_figures_are_deltas_of_the_metrics() -> None:
    def exposition(ok: int, images: int, execs: int, batch_sum: float, compute_us: float, cpu: float) -> str:
        return f"""
camserve_requests_total{{model="m",code="OK"}} {ok}
camserve_requests_total{{model="unknown",code="NOT_FOUND"}} 2
camserve_images_total{{model="m"}} {images}
camserve_queue_seconds_sum{{model="m"}} {ok * 0.002}
camserve_queue_seconds_count{{model="m"}} {ok}
nv_inference_exec_count_total{{model="m",version="1"}} {execs}
nv_inference_batch_size_sum{{model="m",version="1"}} {batch_sum}
nv_inference_batch_size_count{{model="m",version="1"}} {execs}
nv_inference_compute_infer_duration_us_sum{{model="m",version="1"}} {compute_us}
nv_inference_compute_infer_duration_us_count{{model="m",version="1"}} {execs}
process_cpu_seconds_total {cpu}
"""

    before = parse(exposition(10, 10, 5, 10, 5000, 3.0))
    after = parse(exposition(40, 40, 15, 40, 35000, 4.5))
    server = difference(before, after, "m")
    assert (server.requests, server.images, server.batches) == (30, 30, 10)
    assert server.batch_size == pytest.approx(3.0)
    assert server.compute_ms == pytest.approx(3.0)
    assert server.queue_ms == pytest.approx(2.0)
    assert server.cpu_s_per_image == pytest.approx(0.05)
