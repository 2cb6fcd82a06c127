#!/usr/bin/env python
"""Soak test of `camserve serve`: many clients for a minute; requests served, errors, latency
percentiles and the server's memory (RSS) at the start and the end. Prints its figures (not a test).

    python bench/soak.py                                   # 16 clients x 60 s on the default model
    python bench/soak.py --heavy-clients 2                 # the same, plus the heaviest allowed requests
    python bench/soak.py --heavy-clients 2 --hostile-clients 2   # ... and the hostile cases, in turn
    python bench/soak.py --clients 16 --seconds 60 --methods gradcam,gradcam++ --json soak.json
    python bench/soak.py --server 127.0.0.1:50051 --pid 1234   # a running server (RSS needs its pid)

Each client has its own channel and sends one image per request, back to back, alternating the two
APIs: camserve.v1 Explain (PNG bytes) and the Open Inference Protocol's ModelInfer (UINT8 pixels,
through tritonclient). Every answer's map is checked against the first answer for the same image and
API, so a wrong answer counts as an error. A warm-up (--warmup seconds of the same load, not counted)
runs first; RSS "start" is read after it, so pools and caches that fill once are not taken for a leak.
RSS is read from /proc/<pid>/status (Linux).

With --heavy-clients N, N more clients send, in turn, the heaviest requests the server's default limits
admit (``HEAVY_KINDS``): a 7000x7000 PNG (49M decoded pixels), a 4000x4000 map (a 61 MiB answer),
Smooth Grad-CAM++ with 256 noisy copies on 8 images, two 7000x7000 PNGs with a 2 s deadline, a
stream of twenty 4000x4000 maps that is not read for 5 s and then cancelled, and the hostile images of
``bench/hostile_images.py`` in turn (tiled TIFF, 5000-scan JPEG, thin 7000x7000 headers, ...), each of
which must be INVALID_ARGUMENT. The RSS is then also
sampled every 0.1 s, and its peak is printed against the documented bound (docs/service.md):
RSS after the warm-up + max_batch_size x max_image_work_bytes + decode_pixel_budget x 20 B + one
max_message_bytes answer per heavy client.

With --hostile-clients N, N more clients run the hostile cases of ``bench/hostile_cases.py`` in turn
(compression bombs, HTTP/2 floods, absurd shapes and values, ...; each must end with one of its
expected outcomes), and the bound grows by one max_message_bytes message per hostile client. After
the heavy and hostile clients stop, the RSS a few seconds later is printed as "retained".
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import numpy as np
from hostile_cases import HOSTILE_CASES, Target
from hostile_images import HOSTILE_IMAGES

from camserve import defaults
from camserve.loadgen.local_server import LocalServer
from camserve.loadgen.workload import png_bytes as png
from camserve.v1 import camserve_pb2 as pb
from camserve.v1 import camserve_pb2_grpc as pb_grpc

IMAGES = 32
CALL_TIMEOUT_S = 30.0
HEAVY_TIMEOUT_S = 120.0
HEAVY_KINDS = ("big-png", "big-map", "smooth-256", "deadline-2-big-pngs", "unread-stream", "hostile-image")
RETAIN_WAIT_S = 3.0  # the server trims its heap at most once a second after big requests
DECODE_BYTES_PER_PIXEL = 20  # measured: decoding + resizing a big PNG (service/models.py, PixelBudget)


@dataclass
class Figures:
    clients: int
    seconds: float
    methods: str
    requests: int = 0
    errors: int = 0
    error_codes: dict[str, int] = field(default_factory=dict)
    requests_per_s: float = 0.0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    rss_after_start_mib: float = 0.0
    rss_start_mib: float = 0.0  # after the warm-up
    rss_end_mib: float = 0.0
    rss_growth_percent: float = 0.0
    rss_samples_mib: list[float] = field(default_factory=list)
    heavy_clients: int = 0
    heavy_requests: dict[str, dict[str, int]] = field(default_factory=dict)  # kind -> status -> count
    rss_peak_mib: float = 0.0
    rss_bound_mib: float = 0.0
    hostile_clients: int = 0
    hostile_requests: dict[str, dict[str, int]] = field(default_factory=dict)  # case -> outcome -> count
    rss_retained_mib: float = 0.0  # RETAIN_WAIT_S after the heavy and hostile clients stopped


def rss_mib(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", text, re.M).group(1)) / 1024


def digit_pixels(count: int) -> np.ndarray:
    import torch

    from camserve.default_model.data import make_localisation_dataset

    dataset = make_localisation_dataset(count, seed=11, split="test")
    return (dataset.images * 255.0).round().to(dtype=torch.uint8).permute(0, 2, 3, 1).numpy()


class Client(threading.Thread):
    """Sends requests back to back until ``stop``; records latencies after ``measure`` is set."""

    def __init__(
        self,
        index: int,
        address: str,
        model: str,
        methods: list[str],
        pixels: np.ndarray,
        measure: threading.Event,
        stop: threading.Event,
    ) -> None:
        super().__init__(name=f"soak-client-{index}", daemon=True)
        self.index, self.address, self.model, self.methods = index, address, model, methods
        self.pixels = pixels
        self.pngs = [png(p) for p in pixels]
        self.measure, self.stop = measure, stop
        self.latencies_ms: list[float] = []
        self.errors: Counter[str] = Counter()
        self.reference: dict[tuple[str, int], np.ndarray] = {}

    def run(self) -> None:
        import tritonclient.grpc as triton
        from tritonclient.utils import InferenceServerException

        from camserve.wire import tensor_to_array

        with (
            grpc.insecure_channel(self.address) as channel,
            triton.InferenceServerClient(self.address) as oip,
        ):
            explain = pb_grpc.ExplainServiceStub(channel).Explain
            k = self.index
            while not self.stop.is_set():
                n = k % len(self.pixels)
                api = "explain" if k % 2 == 0 else "infer"
                started = time.perf_counter()
                try:
                    if api == "explain":
                        request = pb.ExplainRequest(
                            model=self.model, methods=self.methods, images=[pb.Image(encoded=self.pngs[n])]
                        )
                        reply = explain(request, timeout=CALL_TIMEOUT_S)
                        got = tensor_to_array(reply.images[0].maps[0].data, "map")
                    else:
                        pixels = triton.InferInput("PIXELS", [1, *self.pixels.shape[1:]], "UINT8")
                        pixels.set_data_from_numpy(self.pixels[n : n + 1])
                        answer = oip.infer(
                            self.model,
                            [pixels],
                            parameters={"methods": ",".join(self.methods)},
                            client_timeout=CALL_TIMEOUT_S,
                        )
                        got = answer.as_numpy(f"SALIENCY_{self.methods[0].upper()}")[0, 0]
                    code = self._check(api, n, got)
                except grpc.RpcError as exc:
                    code = exc.code().name
                except InferenceServerException as exc:
                    code = str(exc.status()).removeprefix("StatusCode.")
                elapsed_ms = (time.perf_counter() - started) * 1e3
                if self.measure.is_set() and not self.stop.is_set():
                    self.latencies_ms.append(elapsed_ms)
                    if code != "OK":
                        self.errors[code] += 1
                k += 1

    def _check(self, api: str, n: int, got: np.ndarray) -> str:
        reference = self.reference.setdefault((api, n), got)
        return "OK" if np.allclose(got, reference, atol=1e-4) else "WRONG_ANSWER"


def big_map_request(model: str, request_id: str, png_bytes: bytes) -> pb.ExplainRequest:
    return pb.ExplainRequest(
        id=request_id,
        model=model,
        images=[pb.Image(encoded=png_bytes)],
        output=pb.OutputOptions(size=pb.OUTPUT_SIZE_CUSTOM, height=4000, width=4000),
    )


class HeavyClient(threading.Thread):
    """Sends the heaviest admitted requests (HEAVY_KINDS, in turn) until ``stop``; counts statuses."""

    #: Statuses a heavy request may get without being an error (the deadline kind is meant to expire,
    #: the unread stream is cancelled by the client, a full queue refuses at once).
    EXPECTED = {"OK", "DEADLINE_EXCEEDED", "CANCELLED", "RESOURCE_EXHAUSTED"}
    #: Kinds that must get one status only (a hostile image that is decoded is an error).
    EXPECTED_BY_KIND = {"hostile-image": {"INVALID_ARGUMENT"}}

    def __init__(
        self, index: int, address: str, model: str, pixels: np.ndarray, stop: threading.Event
    ) -> None:
        super().__init__(name=f"soak-heavy-{index}", daemon=True)
        self.index, self.address, self.model, self.pixels, self.stop = index, address, model, pixels, stop
        self.big_png = png(np.zeros((7000, 7000, 3), np.uint8))
        self.small_png = png(pixels[index % len(pixels)])
        self.statuses: dict[str, Counter[str]] = {kind: Counter() for kind in HEAVY_KINDS}
        self.hostile = [make() for make, _ in HOSTILE_IMAGES.values()]  # bench/hostile_images.py
        self.sent_hostile = 0

    def run(self) -> None:
        options = [("grpc.max_receive_message_length", defaults.MAX_MESSAGE_BYTES)]
        with grpc.insecure_channel(self.address, options) as channel:
            stub = pb_grpc.ExplainServiceStub(channel)
            k = self.index
            while not self.stop.is_set():
                kind = HEAVY_KINDS[k % len(HEAVY_KINDS)]
                try:
                    self._send(stub, kind, f"heavy{self.index}-{k}")
                    code = "OK"
                except grpc.RpcError as exc:
                    code = exc.code().name
                self.statuses[kind][code] += 1
                k += 1

    def _send(self, stub: pb_grpc.ExplainServiceStub, kind: str, request_id: str) -> None:
        if kind == "big-png":
            stub.Explain(
                pb.ExplainRequest(id=request_id, model=self.model, images=[pb.Image(encoded=self.big_png)]),
                timeout=HEAVY_TIMEOUT_S,
            )
        elif kind == "big-map":
            stub.Explain(big_map_request(self.model, request_id, self.small_png), timeout=HEAVY_TIMEOUT_S)
        elif kind == "smooth-256":
            request = pb.ExplainRequest(
                id=request_id,
                model=self.model,
                methods=["smoothgradcam++"],
                images=[pb.Image(encoded=png(p)) for p in self.pixels[:8]],
                method_options=pb.MethodOptions(smooth_n=256),
            )
            stub.Explain(request, timeout=HEAVY_TIMEOUT_S)
        elif kind == "deadline-2-big-pngs":  # 98M pixels: max_request_pixels (100M) refuses more
            images = [pb.Image(encoded=self.big_png)] * 2
            stub.Explain(pb.ExplainRequest(id=request_id, model=self.model, images=images), timeout=2.0)
        elif kind == "hostile-image":  # the next of bench/hostile_images.py: refused before decoding
            data = self.hostile[self.sent_hostile % len(self.hostile)]
            self.sent_hostile += 1
            image = pb.Image(encoded=data)
            stub.Explain(pb.ExplainRequest(id=request_id, model=self.model, images=[image]), timeout=30.0)
        else:  # unread-stream: twenty 4000x4000 maps asked for, none read for 5 s, then cancelled
            requests = (big_map_request(self.model, f"{request_id}-{i}", self.small_png) for i in range(20))
            stream = stub.ExplainStream(requests, timeout=HEAVY_TIMEOUT_S)
            self.stop.wait(5.0)
            stream.cancel()
            for _ in stream:  # raises CANCELLED
                pass


class HostileClient(threading.Thread):
    """Runs the hostile cases (bench/hostile_cases.py) in turn until ``stop``; counts outcomes."""

    def __init__(self, index: int, target: Target, stop: threading.Event) -> None:
        super().__init__(name=f"soak-hostile-{index}", daemon=True)
        self.index, self.target, self.stop = index, target, stop
        self.outcomes: dict[str, Counter[str]] = {case.name: Counter() for case in HOSTILE_CASES}
        self.unexpected = 0

    def run(self) -> None:
        k = self.index
        while not self.stop.is_set():
            case = HOSTILE_CASES[k % len(HOSTILE_CASES)]
            try:
                outcome = case.send(self.target)
            except Exception as exc:  # a case that breaks is a finding, not a crash of the soak
                outcome = f"{type(exc).__name__}"
            self.outcomes[case.name][outcome] += 1
            self.unexpected += outcome not in case.expected
            k += 1


class PeakSampler(threading.Thread):
    """The highest RSS of ``pid``, sampled every 0.1 s until ``stop``."""

    def __init__(self, pid: int, stop: threading.Event) -> None:
        super().__init__(name="soak-rss", daemon=True)
        self.pid, self.stop, self.peak_mib = pid, stop, 0.0

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak_mib = max(self.peak_mib, rss_mib(self.pid))
            self.stop.wait(0.1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", help="host:port of a running server (default: start one)")
    parser.add_argument("--pid", type=int, help="process id of --server, for its RSS")
    parser.add_argument("--model", default="digits", help="model name (default: digits)")
    parser.add_argument("--methods", default="gradcam", help="comma-separated CAM methods")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=5.0, help="unmeasured seconds before")
    parser.add_argument(
        "--heavy-clients", type=int, default=0, help="clients sending the heaviest admitted requests"
    )
    parser.add_argument(
        "--hostile-clients", type=int, default=0, help="clients running bench/hostile_cases.py in turn"
    )
    parser.add_argument("--server-flag", action="append", default=[], help="extra `camserve serve` flag")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    pixels = digit_pixels(IMAGES)
    server = None
    with tempfile.TemporaryDirectory() as tmp:
        if args.server:
            address, pid = args.server, args.pid
        else:
            server = LocalServer(None, args.server_flag, Path(tmp) / "serve.log", metrics=False)
            address, pid = server.address, server.proc.pid
        try:
            figures = Figures(args.clients, args.seconds, ",".join(methods))
            if pid:
                figures.rss_after_start_mib = rss_mib(pid)
            measure, stop = threading.Event(), threading.Event()
            clients = [
                Client(i, address, args.model, methods, pixels, measure, stop) for i in range(args.clients)
            ]
            for client in clients:
                client.start()
            time.sleep(args.warmup)
            if pid:
                figures.rss_start_mib = rss_mib(pid)
            heavy_stop = threading.Event()
            heavy = [
                HeavyClient(i, address, args.model, pixels, heavy_stop) for i in range(args.heavy_clients)
            ]
            port = int(address.rsplit(":", 1)[1])
            hostile = [
                HostileClient(i, Target(address, port, args.model), heavy_stop)
                for i in range(args.hostile_clients)
            ]
            sampler = PeakSampler(pid, heavy_stop) if pid and (heavy or hostile) else None
            for thread in [*heavy, *hostile, *([sampler] if sampler else [])]:
                thread.start()
            measure.set()
            started = time.monotonic()
            next_sample = started
            while (now := time.monotonic()) < started + args.seconds:
                if pid and now >= next_sample:
                    figures.rss_samples_mib.append(round(rss_mib(pid), 1))
                    next_sample += 10.0
                time.sleep(min(0.5, max(0.0, started + args.seconds - now)))
            stop.set()
            for client in clients:
                client.join(CALL_TIMEOUT_S + 5)
            heavy_stop.set()
            for client in [*heavy, *hostile]:
                client.join(HEAVY_TIMEOUT_S + 5)
            if pid:
                figures.rss_end_mib = rss_mib(pid)
                if heavy or hostile:
                    time.sleep(RETAIN_WAIT_S)
                    figures.rss_retained_mib = rss_mib(pid)
            if sampler is not None:
                sampler.join(5)
                figures.rss_peak_mib = sampler.peak_mib
        finally:
            if server is not None:
                server.stop()
    latencies = np.array([ms for c in clients for ms in c.latencies_ms])
    errors: Counter[str] = Counter()
    for client in clients:
        errors.update(client.errors)
    figures.requests = int(latencies.size) - sum(errors.values())
    figures.errors = sum(errors.values())
    figures.error_codes = dict(errors)
    figures.requests_per_s = figures.requests / args.seconds
    if latencies.size:
        figures.p50_ms, figures.p90_ms, figures.p99_ms = (
            float(np.percentile(latencies, q)) for q in (50, 90, 99)
        )
        figures.max_ms = float(latencies.max())
    if figures.rss_start_mib:
        figures.rss_growth_percent = 100.0 * (figures.rss_end_mib / figures.rss_start_mib - 1.0)
    figures.heavy_clients = args.heavy_clients
    unexpected = 0
    for client in heavy:
        for kind, counts in client.statuses.items():
            merged = figures.heavy_requests.setdefault(kind, {})
            for code, count in counts.items():
                merged[code] = merged.get(code, 0) + count
                expected = HeavyClient.EXPECTED_BY_KIND.get(kind, HeavyClient.EXPECTED)
                unexpected += 0 if code in expected else count
    figures.hostile_clients = args.hostile_clients
    for hostile_client in hostile:
        unexpected += hostile_client.unexpected
        for name, outcomes in hostile_client.outcomes.items():
            merged = figures.hostile_requests.setdefault(name, {})
            for outcome, count in outcomes.items():
                merged[outcome] = merged.get(outcome, 0) + count
    if figures.rss_start_mib:
        figures.rss_bound_mib = figures.rss_start_mib + (
            defaults.MAX_BATCH_SIZE * defaults.MAX_IMAGE_WORK_BYTES
            + defaults.DECODE_PIXEL_BUDGET * DECODE_BYTES_PER_PIXEL
            + (args.heavy_clients + args.hostile_clients) * defaults.MAX_MESSAGE_BYTES
        ) / (1024 * 1024)

    print(f"soak: {args.clients} clients x {args.seconds:.0f} s, methods {figures.methods}, both APIs")
    print(f"  requests served  {figures.requests}  ({figures.requests_per_s:.1f}/s)")
    print(f"  errors           {figures.errors}  {figures.error_codes or ''}")
    print(
        f"  latency ms       p50 {figures.p50_ms:.1f}  p90 {figures.p90_ms:.1f}  "
        f"p99 {figures.p99_ms:.1f}  max {figures.max_ms:.1f}"
    )
    if figures.rss_start_mib:
        print(
            f"  server RSS MiB   after start {figures.rss_after_start_mib:.1f}, after warm-up "
            f"{figures.rss_start_mib:.1f}, end {figures.rss_end_mib:.1f} "
            f"({figures.rss_growth_percent:+.1f} %); every 10 s: {figures.rss_samples_mib}"
        )
    if heavy:
        print(
            f"  heavy clients    {args.heavy_clients}: "
            + "; ".join(f"{kind} {dict(counts)}" for kind, counts in figures.heavy_requests.items())
        )
    if hostile:
        print(
            f"  hostile clients  {args.hostile_clients}: "
            + "; ".join(f"{name} {dict(counts)}" for name, counts in figures.hostile_requests.items())
        )
    if (heavy or hostile) and figures.rss_start_mib:
        growth = figures.rss_peak_mib - figures.rss_start_mib
        print(
            f"  server RSS peak  {figures.rss_peak_mib:.1f} MiB (+{growth:.1f} over the warm-up); "
            f"documented bound {figures.rss_bound_mib:.1f} MiB; retained {RETAIN_WAIT_S:.0f} s after "
            f"the heavy/hostile load {figures.rss_retained_mib:.1f} MiB"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(figures), indent=2))
    return 0 if figures.errors == 0 and unexpected == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
