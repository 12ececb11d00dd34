"""``s3://`` in and out against a real S3 protocol server (moto in server mode) on loopback."""

import io
import json

import pandas as pd
import pytest
import tifffile

from flows.cli import main

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.fixture
def bucket(s3_options, samples):
    import s3fs

    fs = s3fs.S3FileSystem(**s3_options)
    fs.mkdir("segflow-in")
    fs.mkdir("segflow-out")
    names = ["fluor-3bfd6bb1.png", "fluor-62570c4f.png", "histo-b909aa8f.png"]
    for path, _ in samples:
        if path.name in names:
            fs.pipe_file(f"segflow-in/plate/{path.name}", path.read_bytes())
    fs.pipe_file("segflow-in/plate/broken.png", b"no image here")
    yield fs
    fs.rm("segflow-in", recursive=True)
    fs.rm("segflow-out", recursive=True)


def test_s3_in_and_out_with_storage_options_and_rerun(bucket, s3_options, capsys):
    opts = json.dumps(s3_options)
    assert main(["run", "s3://segflow-in/plate", "s3://segflow-out/run1",
                 "--storage-options", opts]) == 0
    bucket.invalidate_cache()
    tables = {name: pd.read_parquet(f"s3://segflow-out/run1/{name}", storage_options=s3_options)
              for name in ("images", "objects", "failures")}
    assert sorted(tables["images"]["image_id"]) == \
        ["fluor-3bfd6bb1.png", "fluor-62570c4f.png", "histo-b909aa8f.png"]
    assert tables["images"]["uri"].str.startswith("s3://segflow-in/plate/").all()
    assert tables["failures"]["image_id"].tolist() == ["broken.png"]
    assert len(tables["objects"]) == tables["images"]["n_objects"].sum()
    row = tables["images"].iloc[0]
    mask = tifffile.imread(io.BytesIO(bucket.cat_file(f"segflow-out/run1/{row.mask_path}")))
    assert mask.shape == (row.height, row.width)
    assert not [p for p in bucket.find("segflow-out") if ".tmp" in p]
    manifest = json.loads(bucket.cat_file("segflow-out/run1/run.json"))
    assert "storage_options" not in manifest["parameters"]  # credentials never written
    capsys.readouterr()
    main(["run", "s3://segflow-in/plate", "s3://segflow-out/run1", "--storage-options", opts])
    assert "0 images to segment (4 already done)" in capsys.readouterr().out
