"""Odd and hostile image files, each built from a real image, with what segflow must do with it.

Every case is ``(file name, bytes, expected)`` where ``expected`` is ``"objects"`` (a valid
image: a row in images with the nuclei of the original image), ``"valid"`` (a row in images
with some objects: the content differs), ``"empty"`` (valid, zero objects) or
``("fail", words)`` (a row in failures whose message contains ``words``).
"""

import io
import struct
import zlib

import numpy as np
import tifffile
from PIL import Image

BOMB_SIDE = 100_000


def _png(arr, **kw):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", **kw)
    return buf.getvalue()


def _pil(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _tif(arr, **kw):
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, **kw)
    return buf.getvalue()


def png_bomb(side=BOMB_SIDE):
    """A valid PNG header declaring ``side`` x ``side`` pixels, with one tiny IDAT chunk."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit gray
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 1024)) + chunk(b"IEND", b""))


def tiff_bomb(side=BOMB_SIDE):
    """A little-endian TIFF whose one IFD declares ``side`` x ``side`` 8-bit pixels."""
    entries = [  # tag, type, count, value
        (256, 4, 1, side), (257, 4, 1, side), (258, 3, 1, 8), (259, 3, 1, 8),  # zlib
        (262, 3, 1, 1), (273, 4, 1, 8 + 2 + 12 * 9 + 4), (277, 3, 1, 1), (278, 4, 1, side),
        (279, 4, 1, 64),
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        fmt = "<HHIHH" if typ == 3 else "<HHII"
        ifd += struct.pack(fmt, tag, typ, count, value, 0) if typ == 3 else \
            struct.pack(fmt, tag, typ, count, value)
    ifd += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + zlib.compress(b"\x00" * 10_000)[:64]


def jpeg_bomb(side=65_000):
    """A real JPEG whose frame header is patched to declare ``side`` x ``side`` pixels."""
    data = bytearray(_pil(Image.new("L", (16, 16)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5: sof + 9] = struct.pack(">HH", side, side)
    return bytes(data)


def cases(rgb):
    """All cases, built from ``rgb``: a real ``(H, W, 3)`` uint8 microscopy image with nuclei."""
    gray = rgb.mean(axis=-1).astype(np.uint8)
    h, w = gray.shape
    png = _png(rgb)
    tif = _tif(rgb)
    jpg = _pil(Image.fromarray(rgb), "JPEG", quality=95)
    nan = (gray / 255.0).astype(np.float32)
    nan[h // 3: h // 2, w // 3: w // 2] = np.nan
    inf = (gray / 255.0).astype(np.float32)
    inf[0, 0] = np.inf
    cmyk = Image.fromarray(rgb).convert("CMYK")
    return [
        ("zero-bytes.png", b"", ("fail", "empty")),
        ("truncated.png", png[: len(png) // 2], ("fail", "not a readable image")),
        ("truncated.tif", tif[: len(tif) // 2], ("fail", "not a readable TIFF")),
        ("truncated.jpg", jpg[: len(jpg) // 2], ("fail", "not a readable image")),
        ("text-named.png", b"this is a text file, not a picture\n" * 20,
         ("fail", "not a readable image")),
        ("one-pixel.png", _png(gray[:1, :1]), "empty"),
        ("all-zero.png", _png(np.zeros_like(gray)), "empty"),
        ("all-max.png", _png(np.full_like(gray, 255)), "empty"),
        ("all-max-16bit.tif", _tif(np.full(gray.shape, 65535, np.uint16)), "empty"),
        ("gray-16bit.tif", _tif(gray.astype(np.uint16) * 257), "objects"),
        ("gray-16bit.png", _png(gray.astype(np.uint16) * 257), "objects"),
        ("gray-float32.tif", _tif((gray / 255.0).astype(np.float32)), "objects"),
        ("gray-float64.tif", _tif(gray / 255.0), "objects"),
        ("signed-int16.tif", _tif(gray.astype(np.int16) - 128), "objects"),
        ("nan-float32.tif", _tif(nan), ("fail", "NaN or infinite")),
        ("inf-float32.tif", _tif(inf), ("fail", "NaN or infinite")),
        ("complex64.tif", _tif(gray.astype(np.complex64)), ("fail", "pixel type")),
        ("palette.png", _pil(Image.fromarray(rgb).quantize(64), "PNG"), "objects"),
        ("palette.tif", _pil(Image.fromarray(rgb).quantize(64), "TIFF"), "objects"),
        ("cmyk.jpg", _pil(cmyk, "JPEG", quality=95), "objects"),
        ("cmyk.tif", _pil(cmyk, "TIFF"), "objects"),
        ("rgba.png", _png(np.dstack([rgb, np.full_like(gray, 200)])), "objects"),
        ("gray-alpha.png", _pil(Image.fromarray(gray).convert("LA"), "PNG"), "objects"),
        ("one-bit.png", _pil(Image.fromarray(gray > np.percentile(gray, 80)), "PNG"), "valid"),
        ("image.bmp", _pil(Image.fromarray(rgb), "BMP"), "objects"),
        ("planar-rgb.tif", _tif(np.moveaxis(rgb, -1, 0), photometric="rgb",
                                planarconfig="separate"), "objects"),
        ("ten-channels.tif", _tif(np.repeat(gray[..., None], 10, axis=-1),
                                  photometric="minisblack", planarconfig="contig"),
         ("fail", "channels")),
        ("multi-page.tif", _tif(np.stack([gray, gray, gray, gray]), photometric="minisblack"),
         ("fail", "pages")),
        ("five-d.tif", _tif(np.zeros((2, 2, 2, 32, 32), np.uint8), photometric="minisblack"),
         ("fail", "pages")),
        ("bomb-100000x100000.png", png_bomb(), ("fail", "max_pixels")),
        ("bomb-100000x100000.tif", tiff_bomb(), ("fail", "max_pixels")),
        ("bomb-65000x65000.jpg", jpeg_bomb(), ("fail", "max_pixels")),
        ("name with spaces.png", png, "objects"),
        ("ünïcødé 細胞 name.png", png, "objects"),
        ("dots..in..name.png", png, "objects"),
        ("%2e%2e%2fencoded.png", png, "objects"),
    ]
