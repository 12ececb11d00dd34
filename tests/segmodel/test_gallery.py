"""The QC gallery's Markdown: names escaped, failed images listed."""

import re

import pandas as pd
import pytest

from segmodel.pipeline import gallery

#: Names that broke the gallery's table or its text.
HOSTILE = ["two\nlines.png", "a|b.png", "*bold*.png", "<img src=x>.png", "[link](x).png",
           "back`tick`.png", "tab\there\r.png", "under_score_.png", "a\u2028b.png"]


def _cells(line):
    """A table row's cells, split where Markdown splits them (at unescaped pipes)."""
    return [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]


def _unescape(text):
    return re.sub(r"\\(.)", r"\1", text)


@pytest.mark.parametrize("name", HOSTILE, ids=range(len(HOSTILE)))
def test_an_escaped_name_stays_one_literal_cell(name):
    text = gallery.escape(name)
    assert "\n" not in text and "\r" not in text and "\u2028" not in text
    assert _cells(f"| {text} | 3 |") == [text, "3"]
    # nothing left that Markdown reads as markup: every special character is escaped
    assert not re.search(r"(?<!\\)[*_`<>\[\]|]", re.sub(r"\\\\", "", text))
    visible = name.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    assert _unescape(text) == visible.replace("\u2028", "\\u2028")


def test_failed_images_are_listed_with_stage_and_a_shortened_message():
    failures = [
        {"image_id": "bad\n|name.png", "stage": "decode", "error_type": "ImageDecodeError",
         "message": "not a PNG " + "x" * 500},
        {"image_id": "b.tif", "stage": "read", "error_type": "PermissionError",
         "message": "denied"}]
    lines = gallery.failed_section(failures, total=3, out="/data/out_1")
    assert lines[0] == "## Failed images"
    rows = [_cells(line) for line in lines if line.startswith("| ") and "---" not in line]
    assert rows[0] == ["image", "stage", "error"]
    assert [r[:2] for r in rows[1:]] == [[gallery.escape("bad\n|name.png"), "decode"],
                                         ["b.tif", "read"]]
    message = _unescape(rows[1][2])
    assert message.startswith("ImageDecodeError: not a PNG xxx") and message.endswith("…")
    assert len(message) == gallery.MESSAGE_CHARS
    assert _unescape(rows[2][2]) == "PermissionError: denied"
    assert "... and 1 more; every message in full: /data/out\\_1/failures/." in lines


def test_no_failure_gives_no_section():
    assert gallery.failed_section([], total=0, out="o") == []


def test_flagged_images_and_thumbnail_rows_escape_the_names():
    flagged = pd.DataFrame({"image_id": ["x*y*.png", "z.png"], "n_objects": [0, 1],
                            "qc_flags": ["no_objects;flat", "few_objects"]})
    lines = gallery.flagged_section(flagged, out="o", limit=1)
    assert _cells(lines[4]) == ["x\\*y\\*.png", "0", "no\\_objects;flat"]
    assert lines[5] == "\n... and 1 more: see o/images/."
    row = gallery.thumbnail_row(b"\x89PNG", image_id="a|b\n.png", n_objects=4, qc_flags=None,
                                mask="/out/labels/a|b\n.tif")
    cells = _cells(row)
    assert len(cells) == 5 and "\n" not in row
    assert cells[0] == "![a\\|b\\\\n.png](data:image/png;base64,iVBORw==)"
    assert cells[1:] == ["a\\|b\\\\n.png", "4", "ok", "/out/labels/a\\|b\\\\n.tif"]
