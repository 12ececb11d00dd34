"""Microscopy files built from real images: OME-TIFF, TIFF stacks and OME-Zarr (NGFF 0.4/0.5).

Written with tifffile and zarr (the readers segflow uses are tifffile and zarr too, but the files
follow the published OME-TIFF and NGFF layouts, so other readers open them as well).
"""

import csv

import numpy as np
import tifffile
from PIL import Image


def fluorescence_gray(root, n=1):
    """``n`` real 256x256 fluorescence images of the DSB2018 set as 2-D uint8 arrays (the
    first by id with 25 to 60 annotated nuclei)."""
    with open(root / "index.csv", newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: r["id"])
    chosen = [r for r in rows if r["modality"] == "fluorescence" and r["height"] == "256"
              and r["width"] == "256" and 25 <= int(r["nuclei"]) <= 60][:n]
    return [np.asarray(Image.open(root / "images" / f"{r['id']}.png").convert("L"))
            for r in chosen]


def write_ome_tiff(path, array, axes, *, names=None, pixel_size=None):
    """An OME-TIFF of ``array`` with ``axes`` (e.g. ``"CYX"``), channel names and pixel size."""
    metadata = {"axes": axes}
    if names is not None:
        metadata["Channel"] = {"Name": list(names)}
    if pixel_size is not None:
        metadata.update(PhysicalSizeX=pixel_size, PhysicalSizeY=pixel_size,
                        PhysicalSizeXUnit="µm", PhysicalSizeYUnit="µm")
    tifffile.imwrite(path, array, ome=True, photometric="minisblack", metadata=metadata)


def write_ngff(path, cyx, *, names, pixel_size, levels=2, zarr_format=2):
    """An OME-Zarr image (NGFF 0.4 in zarr v2, or 0.5 in zarr v3) of a ``(C, Y, X)`` array with
    ``levels`` 2x pyramid levels, ``omero`` channel labels and a micrometre scale."""
    import zarr

    root = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    level = np.asarray(cyx)
    datasets = []
    for k in range(levels):
        root.create_array(str(k), data=level, chunks=(1, 64, 64))
        size = pixel_size * 2**k
        datasets.append({"path": str(k), "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, size, size]}]})
        level = level[:, ::2, ::2]
    version = "0.4" if zarr_format == 2 else "0.5"
    multiscales = [{"version": version, "name": "image", "datasets": datasets, "axes": [
        {"name": "c", "type": "channel"},
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"}]}]
    omero = {"channels": [{"label": n, "active": True} for n in names]}
    if zarr_format == 2:
        root.attrs.update({"multiscales": multiscales, "omero": omero})
    else:
        for m in multiscales:
            m.pop("version")
        root.attrs.update({"ome": {"version": version, "multiscales": multiscales,
                                   "omero": omero}})
    return path
