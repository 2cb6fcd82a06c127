"""``camserve batch``: explain every image of a dataset into resumable Parquet shards.

    camserve batch --input images/ --out maps/                      # default model and methods
    camserve batch --model resnet50/ --input list.txt --out maps/ --method gradcam --target -1 --target -2
    camserve batch --input table.parquet --bytes-column jpeg --out maps/ --engine ray

--input is a folder (recursive), a text file with one path per line, or a Parquet table with an id
column and a path or image-bytes column. Re-running the same command skips images already in OUT,
so a killed run is resumed by running it again; one job at a time owns OUT. Exit status: 0 when
every image was explained, 1 when OUT's errors table is not empty (OUT/errors/), 2 on bad arguments
or an OUT in use (nothing done), 3 when the disk refused a write (full, read-only).
See docs/batch.md for the output schema and the Ray engine.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from camserve.cli_flags import (
    add_explain_option_flags,
    add_method_flag,
    add_target_spec_flag,
    config_from_flags,
    parse_target_specs,
)
from camserve.defaults import DEFAULT_METHODS, MAX_IMAGE_PIXELS, TOPK_PREDICTIONS
from camserve.errors import InvalidArgumentError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "batch",
        help="explain a whole dataset into resumable Parquet shards",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument(
        "--input", required=True, metavar="SRC", help="folder, text list of paths, or .parquet"
    )
    parser.add_argument(
        "--out", required=True, metavar="OUT", help="output directory (shards + manifest.json)"
    )
    parser.add_argument(
        "--model", metavar="DIR", help="model directory from `camserve export` (default: built-in)"
    )
    add_method_flag(parser)
    add_target_spec_flag(parser)
    parser.add_argument("--engine", choices=("local", "ray"), default="local", help="default: local")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT's maps of a different job")
    parser.add_argument("--batch-size", type=int, default=32, metavar="N", help="images per graph run (32)")
    parser.add_argument("--shard-size", type=int, default=1024, metavar="N", help="images per shard (1024)")
    parser.add_argument(
        "--decode-workers", type=int, default=2, metavar="N", help="threads decoding ahead of the graph (2)"
    )
    parser.add_argument(
        "--max-image-pixels",
        type=int,
        default=MAX_IMAGE_PIXELS,
        metavar="N",
        help=f"larger images are error rows, never decoded ({MAX_IMAGE_PIXELS})",
    )
    source = parser.add_argument_group("Parquet --input")
    source.add_argument("--id-column", default="id", metavar="NAME", help="the stable id column (id)")
    source.add_argument("--path-column", metavar="NAME", help="column of image file paths")
    source.add_argument("--bytes-column", metavar="NAME", help="column of encoded image bytes")
    source.add_argument(
        "--targets-column",
        metavar="NAME",
        help="column of JSON targets per row: class ids or target objects (docs/batch.md)",
    )
    maps = parser.add_argument_group("stored maps")
    maps.add_argument(
        "--map-size",
        default="feature",
        metavar="SIZE",
        help="'feature' (default: the target layer's h x w), 'input' or HxW",
    )
    maps.add_argument("--map-dtype", default="float16", choices=("float16", "float32", "uint8"))
    maps.add_argument("--png", action="store_true", help="also store an 8-bit PNG per map at the input size")
    options = parser.add_argument_group("explain options (as `camserve explain`)")
    add_explain_option_flags(options, topk_help=f"predictions stored per image (default {TOPK_PREDICTIONS})")
    ray = parser.add_argument_group("--engine ray")
    ray.add_argument(
        "--ray-address", metavar="ADDR", help="join this cluster (default: RAY_ADDRESS, else a local Ray)"
    )
    ray.add_argument(
        "--ray-actors", type=int, metavar="N", help="actors, one Explainer each (default: fill the CPUs)"
    )
    ray.add_argument("--ray-cpus-per-actor", type=float, metavar="C", help="CPUs per actor = ORT threads (1)")
    ray.add_argument("--ray-gpus-per-actor", type=float, metavar="G", help="GPUs per actor (0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or progress log lines")
    parser.set_defaults(func=run, output_size=None)


_RAY_FLAGS = {
    "ray_address": "--ray-address",
    "ray_actors": "--ray-actors",
    "ray_cpus_per_actor": "--ray-cpus-per-actor",
    "ray_gpus_per_actor": "--ray-gpus-per-actor",
}


def run(args: argparse.Namespace) -> int:
    from camserve.batch.encoding import MapEncoding
    from camserve.batch.engine_ray import RayOptions
    from camserve.batch.job import JobConfig
    from camserve.batch.run import run_batch
    from camserve.batch.sources import SourceSpec

    if args.engine != "ray":
        given = [flag for name, flag in _RAY_FLAGS.items() if getattr(args, name) is not None]
        if given:
            raise InvalidArgumentError(given[0], "applies only with --engine ray")
    if args.model is not None and not Path(args.model).is_dir():
        raise InvalidArgumentError("--model", f"no such model directory: {args.model}")
    job = JobConfig(
        model=None if args.model is None else str(Path(args.model).resolve()),
        out=str(Path(args.out).resolve()),
        source=SourceSpec(
            input=str(Path(args.input).resolve()),
            id_column=args.id_column,
            path_column=args.path_column,
            bytes_column=args.bytes_column,
            targets_column=args.targets_column,
        ),
        methods=tuple(dict.fromkeys(args.methods or DEFAULT_METHODS)),
        targets=tuple(parse_target_specs(args.targets)) if args.targets else None,
        config=config_from_flags(args),
        encoding=MapEncoding(size=args.map_size, dtype=args.map_dtype, png=args.png),
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        decode_workers=args.decode_workers,
        max_image_pixels=args.max_image_pixels,
    )
    ray = RayOptions(
        address=args.ray_address,
        actors=args.ray_actors or 0,
        cpus_per_actor=args.ray_cpus_per_actor if args.ray_cpus_per_actor is not None else 1.0,
        gpus_per_actor=args.ray_gpus_per_actor or 0.0,
    )
    summary = run_batch(
        job, engine=args.engine, ray=ray, overwrite=args.overwrite, progress=not args.no_progress
    )
    print(summary.line(args.out))
    return 1 if summary.total_errors else 0
