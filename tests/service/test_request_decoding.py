"""Both request decoders, without a server: every field's accepted and refused values, and the same
refusal (status code and rule) from camserve.v1 and the Open Inference Protocol. The decoders run in
one child process (``tests.service.decoding_cases``: camserve's inference stubs cannot share this
process with tritonclient's)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from camserve import defaults
from tests.service.decoding_cases import CASES

ROOT = Path(__file__).resolve().parents[2]
FLOAT_FIELDS = ("eps", "smooth_sigma")


@pytest.fixture(scope="module")
def decoded(models_root: Path) -> dict[str, dict]:
    run = subprocess.run(
        [sys.executable, "-m", "tests.service.decoding_cases", str(models_root)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    answers = [json.loads(line) for line in run.stdout.splitlines()]
    assert [a["case"] for a in answers] == [c.name for c in CASES]
    return {a["case"]: a for a in answers}


def _rule(outcome: dict) -> str:
    """The refusal without the field's name and the side's word ("height must be" -> "must be")."""
    return outcome["rule"].removeprefix("height ").removeprefix("width ").lower()


REFUSED = {
    # case: (status, v1 field, OIP field, rule)
    "smooth_n=0": (
        "INVALID_ARGUMENT",
        "method_options.smooth_n",
        "parameters.smooth_n",
        "must be in 1..256, got 0",
    ),
    "smooth_n=257": (
        "INVALID_ARGUMENT",
        "method_options.smooth_n",
        "parameters.smooth_n",
        "must be in 1..256, got 257",
    ),
    "smooth_sigma=-0.5": (
        "INVALID_ARGUMENT",
        "method_options.smooth_sigma",
        "parameters.smooth_sigma",
        "must be finite and >= 0, got -0.5",
    ),
    "smooth_sigma=nan": (
        "INVALID_ARGUMENT",
        "method_options.smooth_sigma",
        "parameters.smooth_sigma",
        "must be finite and >= 0, got nan",
    ),
    "smooth_sigma=inf": (
        "INVALID_ARGUMENT",
        "method_options.smooth_sigma",
        "parameters.smooth_sigma",
        "must be finite and >= 0, got inf",
    ),
    "eps=-1": ("INVALID_ARGUMENT", "output.eps", "parameters.eps", "must be finite and >= 0, got -1.0"),
    "eps=nan": ("INVALID_ARGUMENT", "output.eps", "parameters.eps", "must be finite and >= 0, got nan"),
    "score_top_n=-1": (
        "INVALID_ARGUMENT",
        "method_options.score_top_n",
        "parameters.score_top_n",
        "must be >= 0 (0: all channels), got -1",
    ),
    "normalize=false uint8": (
        "INVALID_ARGUMENT",
        "output.dtype",
        "parameters.saliency_datatype",
        "uint8 maps need normalize = true (raw maps are unbounded)",
    ),
    "output_size=0x4": (
        "INVALID_ARGUMENT",
        "output.height",
        "parameters.output_size",
        "must be in 1..8192, got 0",
    ),
    "output_size=4x0": (
        "INVALID_ARGUMENT",
        "output.width",
        "parameters.output_size",
        "must be in 1..8192, got 0",
    ),
    "output_size=8193x4": (
        "INVALID_ARGUMENT",
        "output.height",
        "parameters.output_size",
        "must be in 1..8192, got 8193",
    ),
    "methods=nope": (
        "UNIMPLEMENTED",
        "methods[0]",
        "parameters.methods[0]",
        "'nope' is not supported by model 'digits'",
    ),
    "targets=[10]": (
        "INVALID_ARGUMENT",
        "images[0].targets[0]",
        "inputs[1] (TARGETS)[0][0]",
        "class 10 is out of range",
    ),
    "targets=[-11]": (
        "INVALID_ARGUMENT",
        "images[0].targets[0]",
        "inputs[1] (TARGETS)[0][0]",
        "class -11 is out of range",
    ),
    "tensor 71 dims": (
        "INVALID_ARGUMENT",
        "images[0].tensor.shape",
        "inputs[0] (IMAGES).shape",
        "has 71 dimensions; camserve tensors have at most 8",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_both_apis_refuse_alike_naming_their_field(decoded, case):
    status, v1_field, oip_field, rule = REFUSED[case]
    v1, oip = decoded[case]["v1"], decoded[case]["oip"]
    assert (v1["code"], v1["field"]) == (status, v1_field)
    assert (oip["code"], oip["field"]) == (status, oip_field)
    assert _rule(v1).startswith(rule) and _rule(oip) == _rule(v1)


ACCEPTED = sorted(c.name for c in CASES if c.name not in REFUSED and c.name != "methods=1 MiB name")


@pytest.mark.parametrize("case", ACCEPTED)
def test_both_apis_decode_accepted_values_to_the_same_request(decoded, case):
    v1, oip = decoded[case]["v1"], decoded[case]["oip"]
    assert v1["code"] == oip["code"] == "OK"
    for key in ("options", "methods", "targets", "pixels", "cost"):
        assert v1[key] == oip[key], key
    # The same pixels preprocessed by both paths (PNG bytes vs PIXELS) give the same model input.
    assert v1["inputs"] == pytest.approx(oip["inputs"], rel=1e-6)


@pytest.mark.parametrize(
    "case, setting, value",
    [
        ("smooth_n=1", "smooth_n", 1),
        ("smooth_n=256", "smooth_n", 256),
        ("smooth_sigma=0", "smooth_sigma", 0.0),
        ("smooth_seed=-7", "smooth_seed", -7),
        ("eps=0", "eps", 0.0),
        ("score_top_n=0", "score_top_n", 0),
        ("score_top_n=3", "score_top_n", 3),
        ("normalize=false", "normalize", False),
        ("output_size=feature", "output_size", "feature"),
        ("output_size=input", "output_size", "input"),
        ("output_size=7x5", "output_size", "7x5"),
        ("output_size=8192x1", "output_size", "8192x1"),
    ],
)
def test_accepted_values_reach_the_options(decoded, case, setting, value):
    assert decoded[case]["v1"]["options"][setting] == value


def test_a_megabyte_method_name_is_echoed_cut(decoded):
    v1, oip = decoded["methods=1 MiB name"]["v1"], decoded["methods=1 MiB name"]["oip"]
    assert v1["code"] == oip["code"] == "UNIMPLEMENTED"
    assert _rule(v1) == _rule(oip)
    assert len(v1["rule"]) < 600 and "...(1048450 more characters)" in v1["rule"]


def test_defaults_are_the_one_home_s(decoded):
    v1 = decoded["defaults"]["v1"]
    assert v1["methods"] == list(defaults.DEFAULT_METHODS) == ["gradcam"]
    assert v1["targets"] == [[-1]]
    assert v1["options"]["smooth_n"] == defaults.SMOOTH_N
    assert math.isclose(v1["options"]["smooth_sigma"], defaults.SMOOTH_SIGMA)
    assert v1["options"]["output_size"] == defaults.OUTPUT_SIZE
    assert decoded["methods=[]"]["v1"]["methods"] == list(defaults.DEFAULT_METHODS)


def test_duplicate_methods_keep_their_first_order(decoded):
    assert decoded["methods=gradcam++,gradcam,gradcam++"]["v1"]["methods"] == ["gradcam++", "gradcam"]


def test_targets_per_image_and_the_default_target(decoded):
    assert decoded["targets=none"]["v1"]["targets"] == [[-1], [-1]]
    assert decoded["targets=[9,-10]"]["v1"]["targets"] == [[9, -10]]
    assert decoded["targets two images"]["v1"]["targets"] == [[1, 2], [3, -1]]


def test_decoded_pixels_come_from_the_headers_and_cost_counts_them(decoded):
    v1 = decoded["pixels 300x200"]["v1"]
    assert v1["pixels"] == [300 * 200]
    assert v1["cost"]["pixels"] == 300 * 200
    assert decoded["targets=none"]["v1"]["cost"]["images"] == 2


def test_cost_grows_with_targets_methods_and_output_size(decoded):
    base = decoded["defaults"]["v1"]["cost"]
    two_targets = decoded["targets=[9,-10]"]["v1"]["cost"]
    two_methods = decoded["methods=gradcam++,gradcam,gradcam++"]["v1"]["cost"]
    big = decoded["output_size=8192x1"]["v1"]["cost"]
    assert two_targets["targets"] == 2 and two_targets["work_bytes"] > base["work_bytes"]
    assert two_targets["answer_bytes"] > base["answer_bytes"]
    assert two_methods["answer_bytes"] > base["answer_bytes"]
    # 8192 x 1 float32 map vs 64 x 64: the answer holds 8192 values instead of 4096.
    assert big["answer_bytes"] - base["answer_bytes"] == (8192 - 64 * 64) * 4
