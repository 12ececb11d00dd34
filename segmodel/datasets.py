"""Reading an annotated dataset laid out like DSB2018: ``images/<id>.png``, ``labels/<id>.png``,
``index.csv`` (id, modality, ...), with a fixed split by a hash of the id."""

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dsb2018"

#: Percent of ids (by hash) in the validation split; never used for training or tuning.
VAL_PERCENT = 15
#: Percent of ids (by hash, after validation) held out of training to tune thresholds on.
TUNE_PERCENT = 10


def split_of(image_id):
    """``'val'``, ``'tune'`` or ``'train'``: a fixed function of the id's sha1."""
    bucket = int(hashlib.sha1(image_id.encode()).hexdigest(), 16) % 100
    if bucket < VAL_PERCENT:
        return "val"
    if bucket < VAL_PERCENT + TUNE_PERCENT:
        return "tune"
    return "train"


@dataclass(frozen=True)
class Sample:
    id: str
    modality: str
    image_path: Path
    label_path: Path

    def load(self):
        """``(image (H, W, C) uint8, labels (H, W) int32)``."""
        image = np.asarray(Image.open(self.image_path))
        labels = np.asarray(Image.open(self.label_path)).astype(np.int32)
        return image, labels


def list_samples(root=DEFAULT_DATA, split=None):
    """Samples under ``root`` (sorted by id), optionally only those of one ``split``."""
    root = Path(root)
    index = root / "index.csv"
    if not index.is_file():
        raise FileNotFoundError(
            f"dataset index not found: {str(index)!r}. Point data_dir at a folder with index.csv, "
            "images/ and labels/ (e.g. ../shared/data/dsb2018)."
        )
    with open(index, newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: r["id"])
    return [
        Sample(r["id"], r.get("modality", "unknown"), root / "images" / f"{r['id']}.png",
               root / "labels" / f"{r['id']}.png")
        for r in rows
        if split is None or split_of(r["id"]) == split
    ]
