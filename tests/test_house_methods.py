"""House rule: a CAM method describes itself (camserve/methods/base.py's CamMethod), and nothing
outside camserve/methods/ tests a method's name or rediscovers its traits from its requirements."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from camserve.config import ExplainOptions
from camserve.methods import known_methods, method_class

ROOT = Path(__file__).resolve().parent.parent
# Source folders that must not know method names. kernels/ is left out: its "gradcam", "gradcam++",
# "xgradcam" are the names of channel-weight rules (kernels.WeightMethod), the kernels' own words.
SOURCE = ("camserve", "service", "export")
# camserve/defaults.py names the default method; eval/report.py's multi-instance table tests the
# Grad-CAM++ paper's claim about Grad-CAM by name (a question about two named methods, not a trait).
GRAPHS = {"forward", "head", "guided", "fullgradient"}
ALLOWED = {Path("camserve/defaults.py"), Path("camserve/eval/report.py")}


def _strings(node: ast.AST) -> list[str]:
    """String constants of ``node`` and of the literal containers directly in it."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [s for element in node.elts for s in _strings(element)]
    return []


def special_cases(source: str, names: set[str]) -> list[tuple[int, str]]:
    """(line, what) for each comparison with a method name, literal collection of method names, and
    membership test on a method's ``requires``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            for operand in [node.left, *node.comparators]:
                found += [(node.lineno, f"compares with {s!r}") for s in _strings(operand) if s in names]
                # A graph in ``requires`` stands for traits the method states itself (its runs,
                # resolution, colour); "cam_weights" is data a caller may have to look for.
                if isinstance(operand, ast.Attribute) and operand.attr == "requires":
                    if set(_strings(node.left)) & GRAPHS:
                        found.append((node.lineno, "tests a method's requires (read its traits instead)"))
        elif isinstance(node, ast.Tuple | ast.List | ast.Set):
            found += [(node.lineno, f"lists {s!r}") for s in _strings(node) if s in names]
    return sorted(set(found))


def test_the_scan_finds_what_it_looks_for():
    names = {"scorecam", "guidedgradcam"}
    code = (
        'if name == "scorecam":\n    pass\n'
        'NOT = ("guidedgradcam", "x")\n'
        'bad = "guided" in cls.requires\n'
        'ok = "cam_weights" in cls.requires\n'
        'fine = name == "gradcam-like" or "scorecam is slow" in text\n'
    )
    assert special_cases(code, names) == [
        (1, "compares with 'scorecam'"),
        (3, "lists 'guidedgradcam'"),
        (4, "tests a method's requires (read its traits instead)"),
    ]


def test_no_method_name_is_special_cased_outside_methods():
    names = set(known_methods())
    offences = []
    for folder in SOURCE:
        for path in sorted((ROOT / folder).rglob("*.py")):
            relative = path.relative_to(ROOT)
            if relative.parts[:2] == ("camserve", "methods") or relative in ALLOWED:
                continue
            offences += [
                f"{relative}:{line}: {what}" for line, what in special_cases(path.read_text(), names)
            ]
    assert offences == [], "read the method's traits (CamMethod) instead:\n" + "\n".join(offences)


def test_traits_of_the_methods_that_need_more_than_the_explain_run():
    options = ExplainOptions(score_top_n=8, smooth_n=5)
    guided = [method_class(name)() for name in ("guidedbackprop", "guidedgradcam")]
    for method in guided:
        assert (method.resolution, method.colour, method.requires) == ("input", True, frozenset({"guided"}))
        assert method.extra_runs(options, 64) == {"guided": 1}  # one key: the two share one run
    assert method_class("scorecam")().extra_runs(options, 64) == {"masked forward": 8}
    assert method_class("scorecam")().extra_runs(ExplainOptions(score_top_n=0), 64) == {"masked forward": 64}
    assert method_class("scorecam")().extra_runs(options, 4) == {"masked forward": 4}  # top_n >= K: K
    assert method_class("ablationcam")().extra_runs(options, 64) == {"ablated head": 64}
    assert method_class("smoothgradcam++")().noisy_copies(options) == 5
    sharing = [name for name in known_methods() if method_class(name)().shares_explain_run(options)]
    assert sharing == ["cam", "eigencam", "gradcam", "gradcam++", "xgradcam", "layercam", "hirescam"] + [
        "eigengradcam",
        "segeigencam",
        "kpcacam",
        "fem",
        "gradcamelementwise",
        "shapleycam",
        "refinecam",
    ]
    assert method_class("finercam")().extra_runs(options, 64) == {"finercam comparison explain": 1}
    fullgrad = method_class("fullgrad")()
    assert (fullgrad.resolution, fullgrad.colour) == ("input", False)
    assert fullgrad.requires == frozenset({"fullgradient"})
    assert fullgrad.extra_runs(options, 64) == {"fullgradient": 1}
    assert method_class("sscam")().extra_runs(options, 64) == {
        "sscam masked forward": 5 * 8
    }  # smooth_n x top_n
    assert method_class("iscam")().extra_runs(ExplainOptions(smooth_n=3), 64) == {
        "iscam masked forward": 3 * 64
    }
    assert not method_class("smoothgradcam++")().shares_explain_run(options)
    assert method_class("smoothgradcam++")().shares_explain_run(ExplainOptions(smooth_n=0))


@pytest.mark.parametrize("name", ["gradcam", "eigencam", "cam", "scorecam", "ablationcam", "layercam"])
def test_feature_resolution_methods_have_no_colour(name):
    method = method_class(name)
    assert (method.resolution, method.colour) == ("feature", False)
