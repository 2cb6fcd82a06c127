"""Flags that several commands share, declared once so their names, types and help agree."""

from __future__ import annotations

import argparse

from camserve.defaults import DEFAULT_METHODS

_Adder = argparse.ArgumentParser | argparse._ArgumentGroup


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


def add_smoothing_flags(parser: _Adder) -> None:
    """``--eigen-smooth`` / ``--aug-smooth`` into ``args.eigen_smooth`` / ``args.aug_smooth``
    (``ExplainOptions``; docs/methods.md, "Options")."""
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
