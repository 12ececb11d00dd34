"""Mask encoding of the write stage."""

import io

import numpy as np
import pytest
import tifffile
from PIL import Image

from segmodel.storage.export import encode_mask


def test_masks_with_more_than_65535_objects_are_uint32_tiffs():
    labels = np.arange(70000, dtype=np.int32).reshape(280, 250)
    out = tifffile.imread(io.BytesIO(encode_mask(labels, "tif")))
    assert out.dtype == np.uint32 and (out == labels).all()
    with pytest.raises(ValueError, match="do not fit a 16-bit PNG"):
        encode_mask(labels, "png")


def test_png_masks_are_16_bit_and_exact():
    labels = np.arange(1200, dtype=np.int32).reshape(30, 40)
    out = np.asarray(Image.open(io.BytesIO(encode_mask(labels, "png"))))
    assert out.dtype == np.uint16 and (out == labels).all()
