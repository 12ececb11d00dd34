"""The run report on real outputs: its content, escaping, empty outputs, plots, the page."""

import base64
import csv
import html
import io
import json
import re
import shutil
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from segmodel.api import read_table, run
from segmodel.pipeline import report
from segmodel.pipeline.report_html import render_html
from segmodel.storage.io import Store

#: File names an attacker (or an unlucky instrument) could give: markup, quotes, a newline.
HOSTILE = '<script>alert(1)<script>&"q\'\n.png'
HOSTILE_BROKEN = 'bad<img src=x onerror=alert(2)>.png'


def _fluorescence(dsb2018, n):
    """The first ``n`` small DSB2018 fluorescence images."""
    with open(dsb2018 / "index.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["modality"] == "fluorescence"
                and int(r["height"]) * int(r["width"]) <= 256 * 320 and int(r["nuclei"]) >= 10]
    return [dsb2018 / "images" / f"{r['id']}.png" for r in rows[:n]]


@pytest.fixture(scope="module")
def output(dsb2018, tmp_path_factory):
    """One engine run over 3 real images, one of them under a hostile name, a blank frame
    (flagged) and a corrupt file with a hostile name (failed)."""
    base = tmp_path_factory.mktemp("report")
    src = base / "in"
    src.mkdir()
    first, *rest = _fluorescence(dsb2018, 3)
    shutil.copy(first, src / HOSTILE)
    for path in rest:
        shutil.copy(path, src / path.name)
    Image.fromarray(np.full((128, 128), 40, np.uint8)).save(src / "blank.png")
    (src / HOSTILE_BROKEN).write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    summary = run(str(src), str(base / "out"))
    return base, summary


@pytest.fixture(scope="module")
def made(output):
    """The report of that output, made again from its tables."""
    base, _ = output
    return report.output_report(Store(str(base / "out")))


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.attrs = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += attrs


def test_an_engine_run_writes_the_page_and_its_summary_names_it(output):
    base, summary = output
    assert (summary["images"], summary["failed"]) == (4, 1)
    assert summary["report"] == f"{base / 'out'}/report.html"
    page = (base / "out" / "report.html").read_text()
    images = read_table(str(base / "out"), "images")
    text = re.sub(r"<[^>]+>", " ", page)
    assert f"objects</td><td class=\"n\">{images['n_objects'].sum()}<" in page
    assert "failed images</td><td class=\"n\">1<" in page and "Failed images (1)" in text
    assert len(page.encode()) < report.REPORT_BYTES


def test_hostile_file_names_and_messages_are_text_not_markup(output):
    base, _ = output
    page = (base / "out" / "report.html").read_text()
    tags = _Tags()
    tags.feed(page)
    assert "script" not in tags.tags and set(tags.tags) <= {
        "html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "table", "tr", "th",
        "td", "div", "img", "b", "br", "span", "figure", "figcaption", "code"}
    assert not [a for a, _ in tags.attrs if a.startswith("on")]
    shown = html.escape(HOSTILE.replace("\n", "\\n"), quote=True)
    assert f"<b>{shown}</b>" in page  # its gallery card: the name as text, newline shown
    assert html.escape(HOSTILE_BROKEN, quote=True) in page  # the failures table
    assert HOSTILE_BROKEN not in page and "<script>" not in page


def test_the_page_holds_no_external_reference(output):
    base, _ = output
    page = (base / "out" / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "@import" not in page and not re.search(r"url\(\s*['\"]?https?:", page)
    assert "<script" not in page and "<link" not in page
    srcs = re.findall(r'src="([^"]*)"', page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)


def test_flagged_images_come_first_in_the_gallery_then_a_spread(made):
    assert [e.image_id for e in made.gallery][0] == "blank.png"
    assert made.gallery[0].qc_flags == "no_objects;flat;scale_fallback"
    counts = [e.n_objects for e in made.gallery[1:]]
    assert counts == sorted(counts) and len(made.gallery) == 4
    for entry in made.gallery:
        thumb = Image.open(io.BytesIO(entry.png))
        assert max(thumb.size) <= report.THUMBNAIL_SIZE
    assert list(made.flagged["image_id"]) == ["blank.png"]


def test_the_page_plots_objects_sizes_and_the_automatic_scale(made):
    captions = [c for c, _ in made.plots]
    assert captions == ["Objects per image", "Nucleus size (every object)",
                        "Automatic scale per image"]
    for _, png in made.plots:
        assert Image.open(io.BytesIO(png)).size == (380, 280)


def test_a_run_without_automatic_scale_has_no_scale_plot(output, dsb2018):
    base, _ = output
    src = base / "fixed-in"
    src.mkdir()
    shutil.copy(_fluorescence(dsb2018, 1)[0], src / "a.png")
    summary = run(str(src), str(base / "fixed"), scale=1.0)
    made = report.output_report(Store(str(base / "fixed")))
    assert [c for c, _ in made.plots] == ["Objects per image", "Nucleus size (every object)"]
    page = (base / "fixed" / "report.html").read_text()
    assert "Automatic scale per image" not in page and summary["report"]


def test_a_rerun_that_segments_nothing_leaves_the_page_as_it_was(output, tmp_path):
    base, _ = output
    out = tmp_path / "out"
    shutil.copytree(base / "out", out)
    before = (out / "report.html").read_bytes()
    again = run(str(base / "in"), str(out))
    assert (again["images"], again["skipped"], again["report"]) == (0, 5, None)
    assert (out / "report.html").read_bytes() == before
    rows = dict(report.output_report(Store(str(out))).summary)  # the last run: this rerun
    assert (rows["images segmented"], rows["skipped (already done)"]) == (0, 5)


def test_an_output_without_images_gives_a_page_of_zeros(tmp_path):
    store = Store(str(tmp_path))
    made = report.output_report(store)
    assert dict(made.totals) == {"images segmented": 0, "objects": 0, "failed images": 0,
                                 "flagged by QC": 0, "runs": 0}
    assert (made.gallery, made.plots, made.summary) == ([], [], [])
    page = render_html(made)
    assert "No image to show." in page and "No run record in this output." in page


def test_the_last_runs_summary_is_its_record(output, made):
    base, summary = output
    record = json.loads((base / "out" / "run.json").read_text())
    rows = dict(made.summary)
    assert (rows["images found"], rows["images segmented"], rows["failures"],
            rows["objects"], rows["flagged by QC"]) == (5, 4, 1, summary["objects"], 1)
    assert rows["seconds"] == record["counts"]["seconds"]
    assert made.record["model"]["fingerprint"] in render_html(made)


def test_a_missing_input_leaves_its_thumbnail_out_and_says_so(output, tmp_path):
    base, _ = output
    out = tmp_path / "out"
    shutil.copytree(base / "out", out)
    (tmp_path / "in").mkdir()  # the inputs' folder is elsewhere: rows point at base/in
    store = Store(str(out))
    images = read_table(str(out), "images")
    moved = images.assign(uri=images["uri"].str.replace(str(base / "in"), str(tmp_path / "in")))
    warned = []
    entries, missing = report.thumbnails(
        moved, store, choices=lambda _: {"channel": None, "plane": None, "pyramid_level": 0},
        max_bytes=10**6, warn=warned.append)
    assert (entries, missing, len(warned)) == ([], 4, 4)
    assert warned[0].startswith("no thumbnail for ")


def test_the_gallery_markdown_and_the_page_come_from_the_same_entries(made):
    text = report.markdown(made)
    page = render_html(made)
    for entry in made.gallery:
        data = base64.b64encode(entry.png).decode()
        assert data in text and data in page


def test_the_page_lists_the_newest_runs_and_counts_them_all(output, tmp_path):
    base, _ = output
    out = tmp_path / "out"
    shutil.copytree(base / "out", out)
    store = Store(str(out))
    (stamp,) = [p.stem for p in (out / "runs").glob("*.json")]
    record = json.loads((out / "runs" / f"{stamp}.json").read_text())
    for k in range(report.RUNS_LISTED + 9):  # hourly reruns with nothing new, all later
        store.write_json(f"runs/20991231T000000{k:06d}Z.json",
                         {**record, "run_stamp": f"later-{k:03d}",
                          "counts": {**record["counts"], "images": 0}})
    made = report.output_report(store)
    assert dict(made.totals)["runs"] == report.RUNS_LISTED + 10
    assert made.runs[0]["run_stamp"] == f"later-{report.RUNS_LISTED + 8:03d}"
    assert len(made.runs) == report.RUNS_LISTED
    assert len(made.gallery) == 4  # the images of a run no longer listed still shown
    page = render_html(made)
    assert f"Runs ({report.RUNS_LISTED + 10})" in page and "... and 10 more" in page
