"""The local engine: rows, maps equal to Explainer.explain, errors, shards readable by plain pyarrow,
resume, refusal of a different job, other sources and encodings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from camserve.batch import read_errors, read_manifest, read_maps, read_rows
from camserve.batch.encoding import TOLERANCE, MapEncoding
from camserve.batch.run import run_batch
from camserve.batch.sources import SourceSpec
from camserve.config import CamserveConfig, ExplainOptions
from camserve.errors import InvalidArgumentError
from tests.batch.batch_data import BAD, METHODS, make_job


def test_one_row_per_good_image_and_unique_ids(local_out, dataset):
    _, ids = dataset
    rows = read_rows(local_out)
    got = rows.column("id").to_pylist()
    assert len(got) == len(set(got)) == len(ids)
    assert sorted(got) == ids
    manifest = read_manifest(local_out)
    assert manifest["counts"] == {
        "rows": len(ids),
        "errors": len(BAD),
        "shards": len(list(local_out.glob("part-*"))),
    }


def test_errors_table_names_exactly_the_bad_files(local_out, dataset):
    root, _ = dataset
    errors = read_errors(local_out).to_pylist()
    assert sorted(e["id"] for e in errors) == sorted(BAD)
    for error in errors:
        assert error["path"] == str(root / error["id"])
        assert error["message"].startswith(f"{error['path']}: the image cannot be decoded (truncated")


@pytest.mark.parametrize("method", METHODS)
def test_maps_equal_explainer_at_input_size(local_out, dataset, reference, method):
    _, ids = dataset
    maps = read_maps(local_out, ids=ids, method=method)
    assert maps.shape == reference.maps[method].shape
    np.testing.assert_allclose(maps, reference.maps[method], rtol=0, atol=TOLERANCE["float16"])


def test_predictions_and_targets_equal_explainer(local_out, dataset, reference):
    _, ids = dataset
    rows = {
        row["id"]: row
        for row in read_rows(local_out, ["id", "top_ids", "top_probs", "target_ids"]).to_pylist()
    }
    for index, image_id in enumerate(ids):
        row = rows[image_id]
        assert row["target_ids"] == reference.target_ids[index].tolist()
        assert row["top_ids"] == [p.class_id for p in reference.predictions[index]]
        np.testing.assert_allclose(
            row["top_probs"], [p.probability for p in reference.predictions[index]], atol=1e-5
        )


def test_feature_maps_give_every_output_size(local_out, dataset, explainer):
    """Stored at 16x16, the maps reproduce Explainer's 'feature' and any HxW output exactly."""
    root, ids = dataset
    some = ids[:12]
    paths = [str(root / image_id) for image_id in some]
    for size in ("feature", "40x24"):
        expected = explainer.explain(paths, methods=["gradcam"], options=ExplainOptions(output_size=size))
        got = read_maps(local_out, ids=some, method="gradcam", size=size)
        np.testing.assert_allclose(got, expected.maps["gradcam"], rtol=0, atol=TOLERANCE["float16"])
    with pytest.raises(InvalidArgumentError, match="only that size"):
        read_maps(local_out, ids=some, method="guidedbackprop", size="feature")


def test_shards_open_with_plain_pyarrow(local_out, dataset, explainer):
    """Nothing camserve-specific is needed: a glob of files, numpy for the float16 bytes."""
    manifest = json.loads((local_out / "manifest.json").read_text())
    table = pa.concat_tables(pq.read_table(path) for path in sorted(local_out.glob("part-*.parquet")))
    assert table.num_rows == len(dataset[1])
    entry = manifest["maps"]["gradcam"]
    assert entry["shape"] == [1, *explainer.manifest.activation_shape[1:]]
    assert entry["dtype"] == "float16"
    blob = table.column(entry["column"])[0].as_py()
    stored = np.frombuffer(blob, dtype="<f2").reshape(entry["shape"])
    image_id = table.column("id")[0].as_py()
    np.testing.assert_array_equal(
        stored, read_maps(local_out, ids=[image_id], method="gradcam", size="stored")[0]
    )
    assert stored.min() == 0.0 and stored.max() == 1.0  # normalised before storing
    errors = pq.read_table(next((local_out / "errors").glob("part-*.parquet")))
    assert errors.column_names == ["id", "path", "message"]
    model = manifest["job"]["model"]
    assert (
        model["name"] == "digits"
        and model["files"]["explain.onnx"] == explainer.manifest.graphs["explain"].sha256
    )


def test_shards_open_with_duckdb_as_documented(local_out, dataset):
    """docs/batch.md's DuckDB query on the shard glob: one row per image, the same ids and best classes."""
    duckdb = pytest.importorskip("duckdb")
    shards = str(local_out / "part-*.parquet")
    rows = duckdb.sql(f"SELECT id, top_ids[1] AS best FROM read_parquet('{shards}')").fetchall()
    table = read_rows(local_out, columns=["id", "top_ids"])
    want = {image_id: top[0] for image_id, top in zip(*table.to_pydict().values(), strict=True)}
    assert len(rows) == len(dataset[1]) and dict(rows) == want


def test_fullgrad_maps_equal_explainer(tmp_path, dataset, explainer):
    """A method with its own graph (fullgradient) through the batch job: its maps, stored at input
    resolution, are Explainer's."""
    root, ids = dataset
    listing = tmp_path / "list.txt"
    paths = [str(root / image_id) for image_id in ids[:5]]
    listing.write_text("\n".join(paths) + "\n")
    out = tmp_path / "out"
    summary = run_batch(make_job(listing, out, methods=("fullgrad",)), progress=False, explainer=explainer)
    assert (summary.rows, summary.errors) == (5, 0)
    expected = explainer.explain(paths, methods=["fullgrad"]).maps["fullgrad"]
    got = read_maps(out, ids=paths, method="fullgrad")
    assert got.shape == expected.shape == (5, 1, 64, 64)
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE["float16"])


def test_rerun_skips_done_ids_and_writes_nothing(tmp_path, dataset, explainer):
    root, ids = dataset
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(str(root / image_id) for image_id in ids[:20]) + "\n")
    out = tmp_path / "out"
    first = run_batch(
        make_job(listing, out, methods=("gradcam",), shard_size=8), progress=False, explainer=explainer
    )
    assert (first.rows, first.errors, first.skipped) == (20, 0, 0)
    files = sorted(p.name for p in out.glob("part-*"))
    again = run_batch(
        make_job(listing, out, methods=("gradcam",), shard_size=8), progress=False, explainer=explainer
    )
    assert (again.rows, again.errors, again.skipped, again.total_rows) == (0, 0, 20, 20)
    assert sorted(p.name for p in out.glob("part-*")) == files
    # more images in the list: only the new ones are explained, into new shard names
    listing.write_text("\n".join(str(root / image_id) for image_id in ids[:30]) + "\n")
    more = run_batch(
        make_job(listing, out, methods=("gradcam",), shard_size=8), progress=False, explainer=explainer
    )
    assert (more.rows, more.skipped, more.total_rows) == (10, 20, 30)
    assert sorted(read_rows(out, ["id"]).column("id").to_pylist()) == sorted(str(root / i) for i in ids[:30])


def test_different_job_into_same_out_is_refused_unless_overwrite(tmp_path, dataset, explainer):
    root, ids = dataset
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(str(root / image_id) for image_id in ids[:6]) + "\n")
    out = tmp_path / "out"
    run_batch(make_job(listing, out, methods=("gradcam",)), progress=False, explainer=explainer)
    changed = {
        "methods": make_job(listing, out, methods=("gradcam++",)),
        "options.topk_predictions": make_job(
            listing,
            out,
            methods=("gradcam",),
            config=explainer.config.replace(explain={"topk_predictions": 3}),
        ),
        "encoding.dtype": make_job(listing, out, methods=("gradcam",), encoding=MapEncoding(dtype="float32")),
        "targets": make_job(listing, out, methods=("gradcam",), targets=(-2,)),
    }
    for what, job in changed.items():
        with pytest.raises(InvalidArgumentError, match=f"another job \\({what}:.*--overwrite"):
            run_batch(job, progress=False, explainer=explainer)
    summary = run_batch(changed["methods"], overwrite=True, progress=False, explainer=explainer)
    assert (summary.rows, summary.total_rows) == (6, 6)
    assert list(read_manifest(out)["maps"]) == ["gradcam++"]


def test_parquet_sources_give_the_same_maps(tmp_path, dataset, local_out, explainer):
    """A table with a bytes column and one with a path column: same maps as the folder run."""
    root, ids = dataset
    some = ids[:10] + [BAD[0]]  # ids[:10]: gray.png, rgba.png, set0/...
    table = pa.table(
        {
            "key": [f"k{n}" for n in range(len(some))],
            "file": [str(root / i) for i in some],
            "jpeg": [(root / i).read_bytes() for i in some],
        }
    )
    pq.write_table(table, tmp_path / "table.parquet", row_group_size=4)
    for column in ("file", "jpeg"):
        spec = SourceSpec(
            input=str(tmp_path / "table.parquet"),
            id_column="key",
            path_column=column if column == "file" else None,
            bytes_column=column if column == "jpeg" else None,
        )
        out = tmp_path / column
        summary = run_batch(make_job(None, out, source=spec), progress=False, explainer=explainer)
        assert (summary.rows, summary.errors) == (len(some) - 1, 1)
        assert [e["id"] for e in read_errors(out).to_pylist()] == [f"k{len(some) - 1}"]
        keys = [f"k{n}" for n, i in enumerate(some) if i not in BAD]
        for method in METHODS:
            np.testing.assert_allclose(
                read_maps(out, ids=keys, method=method),
                read_maps(local_out, ids=[some[int(k[1:])] for k in keys], method=method),
                atol=TOLERANCE["float16"],
            )


def test_uint8_maps_and_png_columns(tmp_path, dataset, explainer):
    from io import BytesIO

    from PIL import Image

    root, ids = dataset
    some = ids[:8]
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(some) + "\n")  # relative to the list's folder
    for image_id in some:
        target = tmp_path / image_id
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((root / image_id).read_bytes())
    out = tmp_path / "out"
    encoding = MapEncoding(size="feature", dtype="uint8", png=True)
    run_batch(
        make_job(listing, out, methods=("gradcam",), encoding=encoding), progress=False, explainer=explainer
    )
    expected = explainer.explain([str(tmp_path / i) for i in some], methods=["gradcam"]).maps["gradcam"]
    np.testing.assert_allclose(read_maps(out, ids=some, method="gradcam"), expected, atol=TOLERANCE["uint8"])
    rows = read_rows(out, ["id", "png_gradcam"]).to_pylist()
    by_id = {row["id"]: row["png_gradcam"] for row in rows}
    for index, image_id in enumerate(some):
        (png,) = by_id[image_id]
        pixels = np.asarray(Image.open(BytesIO(png)))
        assert pixels.shape == expected.shape[-2:]
        assert np.abs(pixels.astype(np.int32) - np.round(expected[index, 0] * 255)).max() <= 1


def test_map_size_input_stores_explainer_maps(tmp_path, dataset, explainer):
    root, ids = dataset
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(str(root / i) for i in ids[:5]) + "\n")
    out = tmp_path / "out"
    job = make_job(listing, out, methods=("gradcam",), encoding=MapEncoding(size="input", dtype="float32"))
    run_batch(job, progress=False, explainer=explainer)
    assert read_manifest(out)["maps"]["gradcam"]["shape"] == [1, 64, 64]
    expected = explainer.explain([str(root / i) for i in ids[:5]], methods=["gradcam"]).maps["gradcam"]
    got = read_maps(out, ids=[str(root / i) for i in ids[:5]], method="gradcam", size="stored")
    np.testing.assert_allclose(got, expected, atol=TOLERANCE["float32"])


def test_explicit_targets_are_stored_per_row(tmp_path, dataset, explainer):
    root, ids = dataset
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(str(root / i) for i in ids[:4]) + "\n")
    out = tmp_path / "out"
    run_batch(
        make_job(listing, out, methods=("gradcam",), targets=(3, -2)), progress=False, explainer=explainer
    )
    paths = [str(root / i) for i in ids[:4]]
    expected = explainer.explain(paths, methods=["gradcam"], targets=[[3, -2]])
    rows = {r["id"]: r["target_ids"] for r in read_rows(out, ["id", "target_ids"]).to_pylist()}
    assert [rows[p] for p in paths] == expected.target_ids.tolist()
    np.testing.assert_allclose(read_maps(out, ids=paths), expected.maps["gradcam"], atol=TOLERANCE["float16"])


def test_bad_job_fails_before_any_work(tmp_path, dataset, explainer):
    root, _ = dataset
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = {
        "holds no images": make_job(empty, tmp_path / "o1"),
        "no such file": make_job(tmp_path / "missing", tmp_path / "o2"),
        "uint8 maps need normalised": make_job(
            root,
            tmp_path / "o3",
            encoding=MapEncoding(dtype="uint8"),
            config=explainer.config.replace(explain={"normalize": False}),
        ),
        "must be >= 1": make_job(root, tmp_path / "o4", batch_size=0),
        "unknown method": make_job(root, tmp_path / "o5", methods=("nosuchcam",)),
        "--map-size": make_job(root, tmp_path / "o6", encoding=MapEncoding(size="big")),
    }
    for message, job in cases.items():
        with pytest.raises(Exception, match=message):
            run_batch(job, progress=False, explainer=explainer)
        assert not Path(job.out).exists() or not list(Path(job.out).iterdir())


def test_eigen_and_aug_smooth_store_the_explainers_maps(tmp_path, dataset, explainer):
    root, ids = dataset
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(str(root / i) for i in ids[:3]) + "\n")
    config = CamserveConfig.load(env={}).replace(explain={"eigen_smooth": True, "aug_smooth": True})
    out = tmp_path / "out"
    encoding = MapEncoding(size="input", dtype="float32")
    run_batch(
        make_job(listing, out, methods=("gradcam",), encoding=encoding, config=config),
        progress=False,
        explainer=explainer,
    )
    paths = [str(root / i) for i in ids[:3]]
    expected = explainer.explain(paths, methods=["gradcam"], options=config.explain).maps["gradcam"]
    plain = explainer.explain(paths, methods=["gradcam"]).maps["gradcam"]
    assert np.abs(expected - plain).max() > 0.05  # the options did act
    got = read_maps(out, ids=paths, method="gradcam", size="stored")
    np.testing.assert_allclose(got, expected, atol=TOLERANCE["float32"])
    assert read_manifest(out)["job"]["options"]["aug_smooth"] is True


def test_issue_24_methods_store_the_explainer_maps(tmp_path, dataset, explainer):
    """Methods that run more graphs (finercam: a comparison explain run; iscam: masked forward
    images) go through the batch job like the others and store Explainer's maps."""
    root, ids = dataset
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(str(root / i) for i in ids[:3]) + "\n")
    out = tmp_path / "out"
    methods = ("finercam", "eigengradcam", "iscam")
    encoding = MapEncoding(size="input", dtype="float32")
    run_batch(make_job(listing, out, methods=methods, encoding=encoding), progress=False, explainer=explainer)
    paths = [str(root / i) for i in ids[:3]]
    expected = explainer.explain(paths, methods=list(methods))
    for method in methods:
        got = read_maps(out, ids=paths, method=method, size="stored")
        np.testing.assert_allclose(got, expected.maps[method], atol=TOLERANCE["float32"], err_msg=method)
