"""Flags that several commands share, declared once so their names, types and help agree."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from camserve import defaults
from camserve.defaults import DEFAULT_METHODS
from camserve.errors import InvalidArgumentError

if TYPE_CHECKING:
    import numpy as np

    from camserve.config import CamserveConfig
    from camserve.methods.target_kinds import Target

_Adder = argparse.ArgumentParser | argparse._ArgumentGroup


def add_remote_flags(parser: argparse.ArgumentParser) -> None:
    """--tls, --ca-file, --client-cert, --client-key, --token-file: how to reach a --server (shared
    with `camserve bench`)."""
    remote = parser.add_argument_group("with --server: TLS and authentication")
    remote.add_argument("--tls", action="store_true", help="TLS, verified against the system's root CAs")
    remote.add_argument(
        "--ca-file", metavar="PEM", help="CA certificate(s) that verify the server (implies --tls)"
    )
    remote.add_argument(
        "--client-cert", metavar="PEM", help="this client's certificate, for mTLS (implies --tls)"
    )
    remote.add_argument("--client-key", metavar="PEM", help="the key of --client-cert")
    remote.add_argument(
        "--token-file",
        metavar="FILE",
        help="send `authorization: Bearer <token>` with the token in FILE (or set CAMSERVE_AUTH_TOKEN)",
    )


_REMOTE_FLAGS = {
    "tls": "--tls",
    "ca_file": "--ca-file",
    "client_cert": "--client-cert",
    "client_key": "--client-key",
    "token_file": "--token-file",
}


def check_remote_flags(args: argparse.Namespace) -> None:
    """TLS and token flags belong to --server; alone they would be silently ignored."""
    if args.server:
        return
    given = [flag for name, flag in _REMOTE_FLAGS.items() if getattr(args, name)]
    if given:
        raise InvalidArgumentError(given[0], "applies only with --server HOST:PORT")


def client_token(args: argparse.Namespace) -> str | None:
    """The bearer token from --token-file, else CAMSERVE_AUTH_TOKEN, else None."""
    if args.token_file:
        from camserve.wire import read_token_file

        return read_token_file(args.token_file, "--token-file")
    token = os.environ.get("CAMSERVE_AUTH_TOKEN")
    if not token:
        return None
    from camserve.wire import check_token

    return check_token(token.strip(), "CAMSERVE_AUTH_TOKEN")


def add_method_flag(parser: _Adder, default: str | None = None) -> None:
    """``--method NAME`` (repeatable) into ``args.methods``; ``default`` words the help's default."""
    shown = default if default is not None else " ".join(DEFAULT_METHODS)
    parser.add_argument(
        "--method",
        action="append",
        dest="methods",
        metavar="NAME",
        help=f"a CAM method; repeat for several (default: {shown}; see `camserve explain --list-methods`)",
    )


def add_target_flag(parser: _Adder) -> None:
    """``--target CLASS`` (repeatable) into ``args.targets``: a class id or -k, the k-th best class."""
    parser.add_argument(
        "--target",
        action="append",
        dest="targets",
        type=int,
        metavar="CLASS",
        help="class id to explain, or -k for each image's k-th best class; repeat for several (default: -1)",
    )


TARGET_SPEC_HELP = (
    "what to explain: a class id, or -k for each image's k-th best class, or "
    "KIND[:CLASS][:box=x1,y1,x2,y2|mask=FILE.png|FILE.npy|vector=FILE.npy|image=J], e.g. probability:5, "
    "sigmoid:2, region:3:box=10,10,40,40, region:3:mask=m.png, predicted_region:-1, box:2:box=4,4,20,20, "
    "cosine:vector=concept.npy, cosine_image:image=1 (docs/targets.md); repeat for several (default: -1)"
)
# what each kind takes after its class (``Target``'s fields)
_SPEC_FIELDS = {
    "region": ("box", "mask"),
    "box": ("box",),
    "dot": ("vector",),
    "cosine": ("vector",),
    "dot_image": ("image",),
    "cosine_image": ("image",),
}
_CLASS = re.compile(r"-?\d+")


def add_target_spec_flag(parser: _Adder) -> None:
    """``--target SPEC`` (repeatable) into ``args.targets`` as strings; :func:`parse_target_specs`
    reads them (one parser for `camserve explain` and `camserve batch`)."""
    parser.add_argument("--target", action="append", dest="targets", metavar="SPEC", help=TARGET_SPEC_HELP)


def parse_target_specs(specs: Sequence[str], flag: str = "--target") -> list[int | Target]:
    """The targets of ``--target SPEC`` flags (:data:`TARGET_SPEC_HELP`): an int for a plain class,
    else a ``Target``. Files are read here; whether the model takes them (mask size, box inside the
    input, vector length) is ``build_table``'s check (:func:`target_spec_error` names the flag)."""
    return [parse_target_spec(spec, flag) for spec in specs]


def parse_target_spec(spec: str, flag: str = "--target") -> int | Target:
    """One ``--target`` value; InvalidArgumentError naming ``flag`` and the value when it is bad."""
    from camserve.methods.target_kinds import TARGET_KINDS, Target

    where = f"{flag} {spec}"
    if _CLASS.fullmatch(spec.strip()):
        return int(spec)
    kind, _, rest = spec.partition(":")
    if kind not in TARGET_KINDS:
        raise InvalidArgumentError(
            where, f"unknown target kind {kind!r}; expected a class id or one of {', '.join(TARGET_KINDS)}"
        )
    class_id = -1
    head, _, tail = rest.partition(":")
    if head and "=" not in head:
        if not _CLASS.fullmatch(head):
            raise InvalidArgumentError(where, f"expected a class id (or -k) after {kind}:, got {head!r}")
        class_id, rest = int(head), tail
    fields: dict[str, object] = {}
    if rest:
        key, equals, value = rest.partition("=")
        allowed = _SPEC_FIELDS.get(kind, ())
        if not equals or key not in allowed:
            takes = f"takes {' or '.join(f'{name}=...' for name in allowed)}" if allowed else "takes no field"
            raise InvalidArgumentError(where, f"a {kind} target {takes}, got {rest!r}")
        fields[key] = _spec_field(key, value, where)
    if kind in _SPEC_FIELDS and not fields:
        needs = " or ".join(f"{name}=..." for name in _SPEC_FIELDS[kind])
        raise InvalidArgumentError(where, f"a {kind} target needs {needs}")
    return Target(kind=kind, class_id=class_id, **fields)  # type: ignore[arg-type]


def _spec_field(key: str, value: str, where: str) -> object:
    if key == "box":
        try:
            x1, y1, x2, y2 = (float(v) for v in value.split(","))
        except ValueError:
            raise InvalidArgumentError(where, f"box= needs four numbers x1,y1,x2,y2, got {value!r}") from None
        return (x1, y1, x2, y2)
    if key == "image":
        if not _CLASS.fullmatch(value):
            raise InvalidArgumentError(where, f"image= needs the index of an image, got {value!r}")
        return int(value)
    if key == "mask":  # the one mask decoder of every front door (PNG: value / 255)
        from camserve.target_masks import file_mask

        return file_mask(value, where)
    return _read_vector(Path(value), where)


def _read_vector(path: Path, where: str) -> np.ndarray:
    """A concept vector from a .npy file (its length is ``build_table``'s check)."""
    import numpy as np

    if path.suffix.lower() != ".npy":
        raise InvalidArgumentError(where, f"{path}: a vector file is .npy")
    try:
        return np.asarray(np.load(path, allow_pickle=False))
    except OSError as exc:
        raise InvalidArgumentError(where, f"{path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise InvalidArgumentError(where, f"{path}: not a .npy array ({exc})") from None


def target_spec_error(
    exc: InvalidArgumentError, specs: Sequence[str], flag: str = "--target"
) -> InvalidArgumentError:
    """``build_table``'s error about ``targets[0][t].<part>`` as one about the t-th ``--target``."""
    match = re.fullmatch(r"targets\[\d+\]\[(\d+)\](\.\w+)?", exc.argument)
    if match is None or int(match.group(1)) >= len(specs):
        return exc
    message = str(exc)[len(exc.argument) + 2 :]
    part = (match.group(2) or "").lstrip(".")
    return InvalidArgumentError(
        f"{flag} {specs[int(match.group(1))]}", f"{part + ': ' if part else ''}{message}"
    )


def add_explain_option_flags(parser: _Adder, topk_help: str) -> None:
    """The explain options that `camserve explain` and `camserve batch` share (``ExplainOptions``;
    docs/methods.md, "Options"); :func:`config_from_flags` reads them."""
    parser.add_argument("--raw", action="store_true", help="do not min-max normalise the maps")
    parser.add_argument(
        "--smooth-n",
        type=int,
        metavar="N",
        help=f"Smooth Grad-CAM++ noisy copies, 1..{defaults.MAX_SMOOTH_N} (default {defaults.SMOOTH_N})",
    )
    parser.add_argument(
        "--smooth-sigma",
        type=float,
        metavar="S",
        help=f"Smooth Grad-CAM++ noise, fraction of range (default {defaults.SMOOTH_SIGMA})",
    )
    parser.add_argument(
        "--score-top-n", type=int, metavar="N", help="Score-CAM: only the N most active channels"
    )
    parser.add_argument(
        "--eigen-smooth",
        action="store_true",
        help="first principal component of the weighted activations instead of their sum",
    )
    parser.add_argument(
        "--aug-smooth",
        action="store_true",
        help="mean of the maps of 6 copies of each image: flipped or not x input scaled 0.9/1/1.1 "
        "(6x the graph work)",
    )
    parser.add_argument("--topk", type=int, metavar="K", help=topk_help)


_OPTION_FLAGS = {
    "output_size": "--output-size",
    "smooth_n": "--smooth-n",
    "smooth_sigma": "--smooth-sigma",
    "score_top_n": "--score-top-n",
    "topk_predictions": "--topk",
}


def config_from_flags(args: argparse.Namespace) -> CamserveConfig:
    """Configuration file (--config) and environment, then the explain option flags
    (:func:`add_explain_option_flags`; ``args.output_size`` where the command has it)."""
    from camserve.config import CamserveConfig, check_options

    flags = {
        "output_size": getattr(args, "output_size", None),
        "normalize": False if args.raw else None,
        "smooth_n": args.smooth_n,
        "smooth_sigma": args.smooth_sigma,
        "score_top_n": args.score_top_n,
        "eigen_smooth": True if args.eigen_smooth else None,
        "aug_smooth": True if args.aug_smooth else None,
        "topk_predictions": args.topk,
    }
    explain = {name: value for name, value in flags.items() if value is not None}
    config = CamserveConfig.load(args.config, overrides={"explain": explain} if explain else None)
    # Refused before any work, naming the flag when the value came from one.
    check_options(config.explain, {name: _OPTION_FLAGS[name] for name in explain if name in _OPTION_FLAGS})
    return config
