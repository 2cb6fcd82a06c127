"""Every Triton kernel configuration the dispatcher can launch compiles for real GPUs (sm_80, sm_90).

The Triton interpreter accepts programs the compiler rejects (issue 17: XGrad-CAM's multi-tile
weights failed in TritonGPUOptimizeThreadLocality), so the configurations of
``camserve.kernels.launch.launch_configs`` (the launchers' own choice functions) are compiled ahead
of time, no GPU needed, in two worker processes without TRITON_INTERPRET. The test prints registers
and spills per configuration and fails on any compile error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from camserve.kernels import launch
from tests.kernels.kernel_compile import DTYPES, TARGETS

REPO = Path(__file__).resolve().parents[2]
WORKERS = 2


def test_launch_configs_cover_what_the_launchers_choose() -> None:
    """The enumeration reaches the configurations of real shapes (ResNet-50, VGG-16, ViT-B/16,
    a 56x56 plane), split and unsplit, and the flags stay consistent."""
    configs = {step.config() for step in launch.launch_configs()}
    shapes = [(1, 1, 2048, 49), (64, 1, 2048, 49), (16, 3, 512, 196), (2, 5, 768, 196), (1, 2, 256, 3136)]
    for n, t, k, hw in shapes:
        for method in launch.WEIGHT_METHOD_CODES:
            for step in launch.gradient_weighted_cam(n, t, k, hw, method, programs_wanted=528):
                assert step.config() in configs, step
        for per_pixel, relu in ((False, False), (True, False), (True, True)):
            for step in launch.channel_sum_relu(n, t, k, hw, per_pixel, relu):
                assert step.config() in configs, step
        assert launch.channel_weights(n, t, k, hw, ["gradcam", "xgradcam"]).config() in configs
    for size in (7, 14, 224, 384):
        assert launch.upsample_normalize(3, size, size, size != 7, True, True).config() in configs
    kernels = Counter(step.kernel for step in launch.launch_configs())
    assert set(kernels) == {
        "_channel_weights_kernel",
        "_channel_sum_relu_kernel",
        "_gradient_weighted_cam_kernel",
        "_sum_splits_relu_kernel",
        "_upsample_normalize_kernel",
    }


def test_split_plan_matches_the_bytes_model() -> None:
    """Small batches split the channel loop (ResNet-50 layer4, N=1: 32 programs, not 1) at a few
    percent of extra bytes; large batches do not split."""
    one = launch.bytes_moved(1, 1, 2048, 49)
    assert one["splits"] == 32 and one["programs"] == 32
    assert one["with_splits"] / one["minimum"] < 1.05
    big = launch.bytes_moved(512, 1, 2048, 49)
    assert big["splits"] == 1 and big["with_splits"] == big["minimum"]
    for n, t, k, hw in ((1, 1, 64, 49), (2, 4, 512, 196), (8, 1, 768, 196), (1, 1, 2048, 1024)):
        model = launch.bytes_moved(n, t, k, hw)
        assert model["with_splits"] / model["minimum"] <= 1 + 8 / (launch.MIN_CHANNELS_PER_SPLIT * 4)


def test_the_device_jit_compiles_no_variant_the_compile_test_did_not() -> None:
    """On a GPU the JIT specialises runtime arguments (an int of 1 becomes a constant, multiples of
    16 and 16-byte-aligned pointers get hints) unless told not to: every launcher, on unaligned
    views and sizes of 1 and 16, must produce exactly the signatures compiled below."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    argv = [sys.executable, "-m", "tests.kernels.kernel_compile", "--specialisations"]
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1]) == []


@pytest.mark.slow
def test_every_launch_configuration_compiles_for_sm80_and_sm90(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    logs = [tmp_path / f"shard{i}.jsonl" for i in range(WORKERS)]
    workers = []
    for i, log in enumerate(logs):
        # files, not pipes: neither worker waits for the other's reader
        with log.open("w") as out, log.with_suffix(".err").open("w") as err:
            argv = [sys.executable, "-m", "tests.kernels.kernel_compile", "--shard", f"{i}/{WORKERS}"]
            workers.append(subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=err))
    records = []
    for worker, log in zip(workers, logs, strict=True):
        worker.wait(timeout=3600)
        assert worker.returncode == 0, log.with_suffix(".err").read_text()[-3000:]
        records += [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    expected = sum(1 for _ in launch.launch_configs()) * len(DTYPES) * len(TARGETS)
    assert len(records) == expected
    print(f"\n{'kernel':32} {'constexprs':64} {'dtype':5} {'sm':>3} {'regs':>4} {'spills':>6} {'s':>5}")
    for r in sorted(records, key=lambda r: (r["kernel"], str(r["constexprs"]), r["dtype"], r["sm"])):
        flags = ",".join(f"{k}={int(v)}" for k, v in r["constexprs"].items())
        print(
            f"{r['kernel']:32} {flags:64} {r['dtype']:5} {r['sm']:>3} {r.get('reg', '-'):>4} "
            f"{r.get('n_spills', '-'):>6} {r['seconds']:>5}"
        )
    failures = [r for r in records if "error" in r]
    assert not failures, "\n".join(
        f"{r['kernel']} {r['constexprs']} {r['dtype']} sm_{r['sm']}: {r['error']}" for r in failures
    )
    print(
        f"{len(records)} compiles, max registers {max(r['reg'] for r in records)}, "
        f"spilling configurations {sum(r['n_spills'] > 0 for r in records)}, "
        f"{sum(r['seconds'] for r in records):.0f} s of compile time"
    )
