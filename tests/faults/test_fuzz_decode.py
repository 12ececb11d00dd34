"""Fuzzing decode-and-prepare with hypothesis: only ImageDecodeError may escape.

Bytes are random, mutated real files, or real encodings of random arrays of every dtype,
shape and channel count the encoders accept. A bounded number of examples keeps this to
seconds.
"""

import io
import warnings

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from segmodel.inference.passes import prepare
from segmodel.inference.preprocess import ImageDecodeError, decode_image
from segmodel.model.spec import ModelSpec

SPEC = ModelSpec()
LIMIT = 1_000_000  # small max_pixels so a mutated header cannot make an example slow
FUZZ = settings(max_examples=120, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


def _decode_and_prepare(data):
    """Decode and prepare; returns the prepared array or raises ImageDecodeError."""
    try:
        image = decode_image(data, name="fuzz", max_pixels=LIMIT)
    except ImageDecodeError:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no overflow or invalid value on the way
        prepared = prepare(image, SPEC)
    assert prepared.x.dtype == np.float32 and prepared.x.shape[-1] == 3
    assert np.isfinite(prepared.x).all()
    return prepared


@pytest.fixture(scope="module")
def seeds(samples):
    """Real files in every format, a little cropped so mutations stay cheap."""
    rgb = np.asarray(Image.open(samples[1][0]).convert("RGB"))[:48, :40]
    out = []
    for fmt in ("PNG", "JPEG", "BMP", "TIFF"):
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format=fmt)
        out.append(buf.getvalue())
    for arr, kw in ((rgb, {}), (rgb[..., 0].astype(np.uint16) * 100, {"compression": "zlib"}),
                    (rgb[..., 0] / 255.0, {})):
        buf = io.BytesIO()
        tifffile.imwrite(buf, arr, **kw)
        out.append(buf.getvalue())
    return out


@FUZZ
@given(data=st.binary(max_size=4096))
def test_random_bytes_only_raise_image_decode_error(data):
    _decode_and_prepare(data)


@FUZZ
@given(prefix=st.sampled_from([b"\x89PNG\r\n\x1a\n", b"II*\x00", b"MM\x00*", b"\xff\xd8\xff",
                               b"BM", b"II+\x00"]),
       rest=st.binary(max_size=2048))
def test_random_bytes_behind_a_real_magic_number_only_raise_image_decode_error(prefix, rest):
    _decode_and_prepare(prefix + rest)


@settings(FUZZ, suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, 6), edits=st.lists(
    st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8),
    cut=st.one_of(st.none(), st.integers(0, 10**6)))
def test_mutated_real_files_only_raise_image_decode_error(seeds, which, edits, cut):
    data = bytearray(seeds[which])
    for pos, value in edits:
        data[pos % len(data)] = value
    if cut is not None:
        data = data[: cut % len(data)]
    _decode_and_prepare(bytes(data))


DTYPES = ["uint8", "uint16", "int8", "int16", "int32", "uint32", "float32", "float64", "bool",
          "int64", "complex64"]


@FUZZ
@given(dtype=st.sampled_from(DTYPES), h=st.integers(1, 40), w=st.integers(1, 40),
       channels=st.sampled_from([None, 1, 2, 3, 4, 5]), planes=st.integers(1, 3),
       fill=st.sampled_from(["random", "zeros", "max", "nan", "huge"]), seed=st.integers(0, 2**16))
def test_tiffs_of_any_dtype_shape_and_channels_only_raise_image_decode_error(
        dtype, h, w, channels, planes, fill, seed):
    shape = (h, w) if channels is None else (h, w, channels)
    if planes > 1:
        shape = (planes, *shape)
    arr = _array(np.dtype(dtype), shape, fill, seed)
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr)
    prepared = _decode_and_prepare(buf.getvalue())
    if prepared is not None:  # as the file stores it (tifffile may fold a length-1 axis)
        with tifffile.TiffFile(io.BytesIO(buf.getvalue())) as tif:
            assert len(tif.pages) == 1, "multi-page files must be refused"
            page = tif.pages[0]
            assert prepared.x.shape[:2] == (page.imagelength, page.imagewidth)


@FUZZ
@given(mode=st.sampled_from(["L", "RGB", "RGBA", "LA", "P", "I;16", "I", "1", "CMYK"]),
       fmt=st.sampled_from(["PNG", "JPEG", "BMP", "TIFF"]), h=st.integers(1, 40),
       w=st.integers(1, 40), seed=st.integers(0, 2**16))
def test_pillow_images_of_any_mode_and_format_decode_or_raise_image_decode_error(
        mode, fmt, h, w, seed):
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    try:
        img = Image.fromarray(rgb).convert(mode)
        buf = io.BytesIO()
        img.save(buf, format=fmt)
    except (OSError, ValueError, KeyError):
        return  # this format cannot store this mode: nothing to decode
    prepared = _decode_and_prepare(buf.getvalue())
    assert prepared is not None, f"a valid {mode} {fmt} must decode"
    assert prepared.x.shape[:2] == (h, w)


def _array(dtype, shape, fill, seed):
    rng = np.random.default_rng(seed)
    if dtype.kind == "b":
        return rng.random(shape) > 0.5
    if fill == "zeros":
        return np.zeros(shape, dtype)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        if fill == "max":
            return np.full(shape, info.max, dtype)
        return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    arr = (rng.standard_normal(shape) * 1e3).astype(dtype)
    if fill == "max":
        arr[...] = np.finfo(dtype).max if dtype.kind == "f" else 1e30
    elif fill in ("nan", "huge") and arr.size:
        arr.flat[rng.integers(arr.size)] = np.nan if fill == "nan" else np.finfo(dtype).max / 3
    return arr
