"""Reading an annotated dataset laid out like DSB2018.

``images/<id>.png``, ``labels/<id>.png``, ``index.csv`` (id, modality, ...), with a fixed split by a
hash of the id.
"""

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "dsb2018"

#: Percent of ids (by hash) in the validation split; never used for training or tuning.
VAL_PERCENT = 15
#: Percent of ids (by hash, after validation) held out of training to tune thresholds on.
TUNE_PERCENT = 10


def split_of(image_id):
    """``'val'``, ``'tune'`` or ``'train'``: a fixed function of the id's sha1.

    Parameters
    ----------
    image_id : str
        The sample's id.

    Returns
    -------
    {'val', 'tune', 'train'}
        :data:`VAL_PERCENT` and :data:`TUNE_PERCENT` of ids go to the first two.
    """
    bucket = int(hashlib.sha1(image_id.encode()).hexdigest(), 16) % 100
    if bucket < VAL_PERCENT:
        return "val"
    if bucket < VAL_PERCENT + TUNE_PERCENT:
        return "tune"
    return "train"


@dataclass(frozen=True)
class Sample:
    """One training image: its id, modality, and the paths of the image and its labels.

    Parameters
    ----------
    id, modality : str
        The sample's id and imaging modality.
    image_path, label_path : Path
        PNG files of the image and its instance labels.
    """

    id: str
    modality: str
    image_path: Path
    label_path: Path

    def load(self):
        """Read the image and its labels.

        Returns
        -------
        image : (H, W, C) ndarray of uint8
        labels : (H, W) ndarray of int32
        """
        image = np.asarray(Image.open(self.image_path))
        return image, self.load_labels()

    def load_labels(self):
        """The instance labels alone.

        Returns
        -------
        (H, W) ndarray of int32
        """
        return np.asarray(Image.open(self.label_path)).astype(np.int32)


def list_samples(root=DEFAULT_DATA, split=None):
    """Samples under ``root`` (sorted by id), optionally only those of one ``split``.

    Parameters
    ----------
    root : str or Path, optional
        A folder with ``index.csv``, ``images/`` and ``labels/`` (default :data:`DEFAULT_DATA`).
    split : {'train', 'val', 'tune'}, optional
        Keep only this split (see :func:`split_of`); default None keeps all.

    Returns
    -------
    list of Sample

    Raises
    ------
    FileNotFoundError
        If ``root/index.csv`` does not exist.
    """
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


IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


@dataclass(frozen=True)
class PairedSample:
    """An image and its instance-label image from two folders, paired by file stem.

    Parameters
    ----------
    id : str
        The shared file stem.
    image_path, label_path : Path
        The image and its label image.
    modality : str, optional
        Default ``"own"``.
    """

    id: str
    image_path: Path
    label_path: Path
    modality: str = "own"

    def load(self):
        """Read the image and its labels; labels must be one 2-D integer plane.

        Returns
        -------
        image : (H, W, C) ndarray
        labels : (H, W) ndarray of int32

        Raises
        ------
        ImageDecodeError
            If either file cannot be decoded as an image.
        ValueError
            If the labels are not one plane of integers, or their size differs from the image's.
        """
        from segmodel.inference.preprocess import decode_image

        image = decode_image(self.image_path.read_bytes(), name=str(self.image_path))
        labels = decode_image(self.label_path.read_bytes(), name=str(self.label_path))
        if labels.shape[-1] != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"label image {str(self.label_path)!r} must be one plane of integers (0 = "
                f"background, 1..N = objects). Received: shape {labels.shape}, dtype "
                f"{labels.dtype}. Save instance labels as 16-bit PNG or integer TIFF.")
        if labels.shape[:2] != image.shape[:2]:
            raise ValueError(
                f"label image {str(self.label_path)!r} is {labels.shape[1]}x{labels.shape[0]} "
                f"but its image {str(self.image_path)!r} is {image.shape[1]}x{image.shape[0]}: "
                "they must match.")
        return image, labels[..., 0].astype(np.int32)

    def load_labels(self):
        """The instance labels alone (reads the image too, to check the sizes match).

        Returns
        -------
        (H, W) ndarray of int32

        Raises
        ------
        ImageDecodeError, ValueError
            As :meth:`load`.
        """
        return self.load()[1]


def list_pairs(images_dir, labels_dir):
    """Images of ``images_dir`` paired with the label image of the same stem in ``labels_dir``.

    ``a01.png`` pairs with ``a01.png``, ``a01.tif`` (or any image suffix) of the labels folder.

    Parameters
    ----------
    images_dir, labels_dir : str or pathlib.Path
        Local folders of images and of their instance label images.

    Returns
    -------
    samples : list of PairedSample
        Sorted by id (the file stem).
    unpaired : list of str
        Ids of images without a label image.

    Raises
    ------
    FileNotFoundError
        A folder is missing, or no image has a label image.
    ValueError
        Two files of one folder share a stem.
    """
    images_dir, labels_dir = Path(images_dir), Path(labels_dir)
    for name, folder in (("images", images_dir), ("labels", labels_dir)):
        if not folder.is_dir():
            raise FileNotFoundError(f"{name} folder not found: {str(folder)!r}. Pass a folder "
                                    "of " + ("images" if name == "images"
                                             else "instance label images") + ".")

    def by_stem(folder):
        found = {}
        for p in sorted(folder.iterdir()):
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."):
                if p.stem in found:
                    raise ValueError(f"two files with the stem {p.stem!r} in {str(folder)!r} "
                                     f"({found[p.stem].name}, {p.name}): keep one.")
                found[p.stem] = p
        return found

    images, labels = by_stem(images_dir), by_stem(labels_dir)
    samples = [PairedSample(s, images[s], labels[s]) for s in sorted(images) if s in labels]
    if not samples:
        raise FileNotFoundError(
            f"no image of {str(images_dir)!r} has a label image of the same name in "
            f"{str(labels_dir)!r} ({len(images)} images, {len(labels)} label files). Name each "
            "label image like its image (a01.png -> a01.png or a01.tif).")
    return samples, sorted(set(images) - set(labels))


def magnify(image, labels, factor):
    """An image and its labels as recorded at ``factor`` times the magnification.

    ``image`` and its instance ``labels`` as a microscope ``factor`` times the magnification would
    have recorded them: the image resampled by area averaging (``factor < 1``) or bicubic
    interpolation, the labels by nearest neighbour.

    Parameters
    ----------
    image : (H, W) or (H, W, C) ndarray
    labels : (H, W) int ndarray
        Instance labels of ``image``.
    factor : float
        Magnification factor (> 0); 1 returns both unchanged.

    Returns
    -------
    image : (round(H*factor), round(W*factor)[, C]) ndarray
        Same dtype.
    labels : (round(H*factor), round(W*factor)) ndarray
        Same dtype.
    """
    if factor == 1:
        return image, labels
    h, w = labels.shape[:2]
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    method = Image.Resampling.BOX if factor < 1 else Image.Resampling.BICUBIC
    image = np.asarray(image)
    planes = image[..., None] if image.ndim == 2 else image
    out = np.stack([_resize_plane(planes[..., c], size, method)
                    for c in range(planes.shape[-1])], axis=-1)
    out = out[..., 0] if image.ndim == 2 else out
    lab = Image.fromarray(np.asarray(labels, dtype=np.int32)).resize(
        size, Image.Resampling.NEAREST)
    return out, np.asarray(lab, dtype=np.int32)


def _resize_plane(plane, size, method):
    """One 2-D plane resized in float (no rounding between steps), cast back to its dtype."""
    out = np.asarray(Image.fromarray(plane.astype(np.float32), mode="F").resize(size, method))
    if np.issubdtype(plane.dtype, np.integer):
        info = np.iinfo(plane.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(plane.dtype)
