"""A run's report, made once and shown two ways: Markdown for the Prefect UI, and report.html.

:func:`run_report` gathers what one run did (its summary, its images chosen for the gallery with
their outline thumbnails, its flagged images, its failures) for the run's artifacts;
:func:`output_report` gathers the same for the whole output (every run's images, read from the
tables alone) plus plots, for ``OUTPUT/report.html``. Both give a :class:`Report`, rendered by
:func:`markdown` and :func:`summary_table` (the artifacts) or :func:`render_html` (the page), so
the UI and the page are made by the same code and cannot disagree.

The page is self-contained: thumbnails and plots are embedded as PNG data, with no script,
font or stylesheet from elsewhere, and its size is bounded whatever the image count (at most
:data:`HTML_GALLERY_IMAGES` thumbnails and :data:`HTML_GALLERY_BYTES` of them, the first
:data:`HTML_LISTED` flagged and failed images, three plots).
"""

import io
import json
import logging
import time
from dataclasses import dataclass, field

from segmodel.pipeline import qc

_log = logging.getLogger("segflow")

#: The page's name under OUTPUT.
REPORT_FILE = "report.html"
#: Thumbnails in the run's gallery artifact, and their PNG bytes at most.
GALLERY_IMAGES, GALLERY_BYTES = 8, 1_000_000
#: Thumbnails on the page, and their PNG bytes at most (base64 adds a third).
HTML_GALLERY_IMAGES, HTML_GALLERY_BYTES = 24, 1_500_000
#: Longest side of a thumbnail, in pixels.
THUMBNAIL_SIZE = 256
#: Flagged and failed images listed by name: in the artifact, on the page.
LISTED, HTML_LISTED = 50, 200
#: Runs listed on the page, newest first.
RUNS_LISTED = 50
#: What the page's size stays under, whatever the image count (a test checks it on 1,000).
REPORT_BYTES = 3_000_000

@dataclass(frozen=True)
class Entry:
    """One image of the gallery: its outline thumbnail and what the images table says of it."""

    image_id: str
    n_objects: int
    qc_flags: str
    mask: str
    png: bytes


@dataclass(frozen=True)
class Report:
    """What a report shows, before it is rendered (see the module docstring).

    Attributes
    ----------
    scope : {'run', 'output'}
        One run's images, or every image of the output.
    out : str
        The output's URL.
    title : str
    summary : list of (str, object)
        The run's summary rows, metric and value.
    gallery : list of Entry
        Flagged images first, then a spread of the others.
    missing : int
        Images chosen for the gallery whose input could not be read again.
    flagged : pandas.DataFrame
        Every flagged image: ``image_id``, ``n_objects``, ``qc_flags``.
    failures : list of dict
        The first failures rows (``image_id``, ``stage``, ``error_type``, ``message``).
    failed : int
        Every failed image.
    listed : int
        Flagged and failed images listed by name.
    totals : list of (str, object)
        The whole output's counts (``'output'`` scope only).
    record : dict or None
        The last run's record (``run.json``): model, version, parameters.
    runs : list of dict
        The newest :data:`RUNS_LISTED` run records, newest first (``'output'`` scope only).
    plots : list of (str, bytes)
        Caption and PNG data (``'output'`` scope only).
    """

    scope: str
    out: str
    title: str
    summary: list
    gallery: list
    missing: int
    flagged: object
    failures: list
    failed: int
    listed: int
    totals: list = field(default_factory=list)
    record: dict = None
    runs: list = field(default_factory=list)
    plots: list = field(default_factory=list)


def summary_rows(counts, *, flags, flagged, run_name="", out=""):
    """The summary rows of one run: counts, time, speed and QC flags.

    Parameters
    ----------
    counts : dict
        The run's counts (:meth:`segmodel.pipeline.clock.RunMeter.summary`, run.json's
        ``counts``).
    flags : dict
        ``{flag: images}`` of the run's flagged images.
    flagged : int
        The run's flagged images.
    run_name : str, optional
        The run's name (the Prefect flow run's); default none.
    out : str, optional
        The output's URL; default none.

    Returns
    -------
    list of (str, object)
    """
    rows = [("run", run_name), ("images found", counts.get("found", "")),
            ("images segmented", counts["images"]), ("objects", counts["objects"]),
            ("failures", counts["failed"]), ("skipped (already done)", counts["skipped"]),
            ("flagged by QC", flagged),
            ("seconds", counts["seconds"]), ("images/s", counts["images_per_second"]),
            ("output", out)]
    return rows + [(f"qc: {f}", n) for f, n in sorted(flags.items())]


def choose(rows, limit):
    """Up to ``limit`` images rows for a gallery: flagged first, then a spread of the others.

    Flagged rows come most flags first; the others are spaced evenly along their object
    counts, so the gallery shows the sparse and the crowded images as well as the typical.

    Parameters
    ----------
    rows : pandas.DataFrame
        Images rows (``image_id``, ``n_objects``, ``qc_flags``).
    limit : int

    Returns
    -------
    pandas.DataFrame
    """
    if not len(rows):
        return rows
    n_flags = rows["qc_flags"].fillna("").map(lambda t: len(qc.split_flags(t)))
    rows = rows.assign(_n=n_flags)
    flagged = rows[rows["_n"] > 0].sort_values(["_n", "image_id"], ascending=[False, True])
    others = rows[rows["_n"] == 0].sort_values(["n_objects", "image_id"])
    room = max(0, limit - len(flagged))
    if 0 < room < len(others):
        step = (len(others) - 1) / max(room - 1, 1)
        others = others.iloc[sorted({round(k * step) for k in range(room)})]
    import pandas as pd

    return pd.concat([flagged.head(limit), others.head(room)]).drop(columns="_n")


def thumbnails(rows, output, *, choices, storage_options=None, max_bytes, cache=None,
               warn=_log.warning):
    """Outline thumbnails of ``rows``, their inputs read again through their ``uri``.

    Parameters
    ----------
    rows : pandas.DataFrame
        Images rows in gallery order (``image_id``, ``uri``, ``mask_path``, ``n_objects``,
        ``qc_flags``, ``shard``).
    output : segmodel.storage.io.Store
    choices : callable
        ``choices(shard)``: the input choices of the run that wrote the shard
        (:meth:`segmodel.pipeline.config.RunConfig.choices`).
    storage_options : dict, optional
        For the inputs; default none.
    max_bytes : int
        The thumbnails' PNG bytes at most; the rest are left out.
    cache : dict, optional
        Thumbnails already made, by ``(uri, mask_path, shard)``; filled in.
    warn : callable, optional
        Called with a line for each image whose input cannot be read again (default: a
        warning of the ``segflow`` logger).

    Returns
    -------
    entries : list of Entry
    missing : int
        Rows whose thumbnail could not be made.
    """
    cache = {} if cache is None else cache
    entries, used, missing = [], 0, 0
    for row in rows.itertuples():
        key = (row.uri, row.mask_path, row.shard)
        if key not in cache:
            try:
                cache[key] = _thumbnail(row, output, choices(row.shard), storage_options)
            except (OSError, ValueError) as exc:  # moved or deleted since: leave it out
                warn(f"no thumbnail for {row.image_id}: {exc}")
                missing += 1
                continue
        if used + len(cache[key]) > max_bytes:
            break
        used += len(cache[key])
        entries.append(Entry(row.image_id, int(row.n_objects), _text(row.qc_flags),
                             f"{output.url.rstrip('/')}/{row.mask_path}", cache[key]))
    return entries, missing


def _thumbnail(row, output, choices, storage_options):
    from segmodel.storage.io import Store

    uri, image_id = str(row.uri), str(row.image_id)
    if not uri.endswith(image_id):
        raise ValueError(f"uri {uri!r} does not end with the image id")
    source = Store(uri[: len(uri) - len(image_id)] or ".", storage_options or {})
    return qc.read_thumbnail(source, output, image_id, row.mask_path,
                             max_size=THUMBNAIL_SIZE, **choices)


def _text(value):
    """A table's text value; missing (None, NA) as ``''``."""
    return value if isinstance(value, str) else ""


def run_report(config, outliers, summary, failures, *, run_name="", cache=None, warn=_log.warning):
    """The report of one run: its summary, its gallery, flagged and failed images.

    Parameters
    ----------
    config : RunConfig
    outliers : segmodel.pipeline.run.Outliers
        The run's images rows with their QC flags (:func:`segmodel.pipeline.run.flag_outliers`).
    summary : dict
        The run's counts (:meth:`segmodel.pipeline.clock.RunMeter.summary`).
    failures : list of dict
        The run's first failures rows.
    run_name : str, optional
        The run's name; default none.
    cache : dict, optional
        Thumbnails already made (see :func:`thumbnails`); filled in.
    warn : callable, optional
        Called with a line for each image whose input cannot be read again (default: a
        warning of the ``segflow`` logger).

    Returns
    -------
    Report
    """
    out = config.output.url.rstrip("/")
    chosen = choose(outliers.rows, GALLERY_IMAGES)
    gallery, missing = thumbnails(chosen, config.output, choices=lambda _: config.choices(),
                                  storage_options=config.options.storage_options,
                                  max_bytes=GALLERY_BYTES, cache=cache, warn=warn)
    return Report(scope="run", out=out, title=f"QC gallery: {run_name or 'segment-images'}",
                  summary=summary_rows(summary, flags=outliers.counts,
                                       flagged=len(outliers.flagged), run_name=run_name,
                                       out=out),
                  gallery=gallery, missing=missing, flagged=_flag_columns(outliers.flagged),
                  failures=list(failures[:LISTED]), failed=summary["failed"], listed=LISTED)


def _flag_columns(rows):
    import pandas as pd

    if not len(rows):
        return pd.DataFrame({"image_id": [], "n_objects": [], "qc_flags": []})
    return rows[["image_id", "n_objects", "qc_flags"]].reset_index(drop=True)


def output_report(output, *, storage_options=None, cache=None, warn=_log.warning):
    """The report of a whole output, read from its tables and run records alone.

    Parameters
    ----------
    output : segmodel.storage.io.Store
        The output of one or more runs.
    storage_options : dict, optional
        For the inputs, read again for the thumbnails; default none.
    cache : dict, optional
        Thumbnails already made (see :func:`thumbnails`); filled in.
    warn : callable, optional
        Called with a line for each image whose input cannot be read again (default: a
        warning of the ``segflow`` logger).

    Returns
    -------
    Report
    """
    from segmodel.pipeline.outputs import read_table

    url, options = output.url, output.storage_options
    images = read_table(url, "images", options)
    failures = read_table(url, "failures", options)
    runs, n_runs = _run_records(output, RUNS_LISTED)
    record = runs[0] if runs else None
    flagged = images[images["qc_flags"].fillna("") != ""] if len(images) else images
    chosen = choose(images, HTML_GALLERY_IMAGES)
    gallery, missing = thumbnails(chosen, output, choices=_choices_by_run(output, runs),
                                  storage_options=storage_options,
                                  max_bytes=HTML_GALLERY_BYTES, cache=cache, warn=warn)
    out = url.rstrip("/")
    return Report(
        scope="output", out=out, title=f"segflow report: {out}",
        summary=_last_run_summary(record, images, out), gallery=gallery, missing=missing,
        flagged=_flag_columns(flagged), failures=failures.head(HTML_LISTED).to_dict("records"),
        failed=len(failures), listed=HTML_LISTED, record=record, runs=runs,
        totals=[("images segmented", len(images)),
                ("objects", int(images["n_objects"].sum()) if len(images) else 0),
                ("failed images", len(failures)), ("flagged by QC", len(flagged)),
                ("runs", n_runs)],
        plots=plots(images, _areas(url, options)))


def _run_records(output, limit):
    """The newest ``limit`` run records, newest first, and how many there are.

    Records are ``runs/*.json``, or ``run.json`` where there are none.
    """
    paths = output.list("runs", ".json")
    if not paths and output.exists("run.json"):
        paths = [output.path("run.json")]
    return [json.loads(output.read_bytes(p)) for p in paths[::-1][:limit]], len(paths)


def _choices_by_run(output, runs):
    """``choices(shard)``: the input choices of the run whose stamp starts the shard's name.

    A record not among ``runs`` is read when needed; where it is gone, the newest run's.
    """
    records = {r.get("run_stamp"): r for r in runs}

    def choices(shard):
        stamp = str(shard).split("-")[0]
        if stamp not in records:
            path = output.path("runs", f"{stamp}.json")
            records[stamp] = json.loads(output.read_bytes(path)) if output.exists(
                "runs", f"{stamp}.json") else (runs[0] if runs else {})
        p = records[stamp].get("parameters", {})
        return {"channel": p.get("channel"), "plane": p.get("plane"),
                "pyramid_level": p.get("pyramid_level") or 0}

    return choices


def _last_run_summary(record, images, out):
    """The summary rows of the last run, its flags counted in the images it wrote."""
    if record is None:
        return []
    stamp = record.get("run_stamp", "")
    mine = images[images["shard"].str.startswith(stamp)] if len(images) and stamp else images
    counts = {}
    for text in mine["qc_flags"].fillna("") if len(mine) else []:
        for f in qc.split_flags(text):
            counts[f] = counts.get(f, 0) + 1
    flagged = int((mine["qc_flags"].fillna("") != "").sum()) if len(mine) else 0
    name = (record.get("prefect_flow_run") or {}).get("name") or stamp
    return summary_rows(record["counts"], flags=counts, flagged=flagged, run_name=name, out=out)


def _areas(url, storage_options):
    """Every object's area (pixels) in the output's objects table."""
    import numpy as np
    import pyarrow.dataset as ds

    from segmodel.storage.io import Store

    store = Store(url, storage_options or {})
    parts = store.list("objects", ".parquet")
    if not parts:
        return np.zeros(0)
    table = ds.dataset(parts, format="parquet", filesystem=store.fs).to_table(columns=["area"])
    return table.column("area").to_numpy()


def plots(images, areas):
    """The page's plots: objects per image, nucleus diameters, and the scale per image.

    matplotlib is imported here, not before: a run's start does without it.

    Parameters
    ----------
    images : pandas.DataFrame
        The images table (``n_objects``, ``nucleus_diameter``, ``scale``).
    areas : (N,) ndarray
        Every object's area in pixels.

    Returns
    -------
    list of (str, bytes)
        Caption and PNG data; none for an output without images. The scale plot is there only
        where automatic scale measured a nucleus diameter.
    """
    import numpy as np

    if not len(images):
        return []
    shown = [("Objects per image", "objects in the image", "images",
              lambda ax: ax.hist(images["n_objects"], bins=min(40, max(5, len(images))),
                                 color="#4477aa"))]
    if len(areas):
        diameters = np.sqrt(4 * np.asarray(areas, float) / np.pi)
        shown.append(("Nucleus size (every object)", "diameter of the disk of the same area "
                      "(px)", "objects", lambda ax: ax.hist(diameters, bins=50,
                                                              color="#228833")))
    measured = images[images["nucleus_diameter"].notna()]
    if len(measured):
        shown.append(("Automatic scale per image", "nucleus diameter estimated (px)",
                      "scale used", lambda ax: ax.scatter(measured["nucleus_diameter"],
                                                          measured["scale"], s=12,
                                                          color="#aa3377")))
    return [(caption, _plot(x, y, draw)) for caption, x, y, draw in shown]


def _plot(xlabel, ylabel, draw):
    """One small figure as PNG data (matplotlib's Agg canvas; pyplot is not used)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.8, 2.8), dpi=100)  # margins set, not laid out: 3x faster
    fig.subplots_adjust(left=0.17, bottom=0.17, right=0.97, top=0.97)
    ax = fig.subplots()
    draw(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def summary_table(report):
    """The summary rows as a Prefect table artifact's rows.

    Parameters
    ----------
    report : Report

    Returns
    -------
    list of dict
        ``{'metric': ..., 'value': ...}`` per row.
    """
    return [{"metric": k, "value": v} for k, v in report.summary]


def markdown(report):
    """The report's gallery as Markdown: thumbnails, failed and flagged images.

    Every name is escaped (see :mod:`segmodel.pipeline.gallery`).

    Parameters
    ----------
    report : Report

    Returns
    -------
    str
    """
    from segmodel.pipeline import gallery

    where, values = gallery.escape(report.out), dict(report.summary)
    lines = [f"# {gallery.escape(report.title)}", "",
             (f"{values['images segmented']} images segmented, {values['failures']} failed, "
              f"{values['flagged by QC']} flagged by QC, {values['skipped (already done)']} "
              "already done."), "",
             (f"Outputs: masks {where}/labels/, tables {where}/images/, {where}/objects/, "
              f"{where}/intensities/, {where}/failures/, run record {where}/run.json"
              + (f", report {where}/{REPORT_FILE}." if values["images segmented"] else ".")), ""]
    cells = [gallery.thumbnail_row(e.png, image_id=e.image_id, n_objects=e.n_objects,
                                   qc_flags=e.qc_flags, mask=e.mask) for e in report.gallery]
    if cells:
        lines += ["| outlines | image | objects | QC flags | mask |", "|---|---|---|---|---|",
                  *cells, ""]
    else:
        lines += ["No image was segmented in this run.", ""]
    lines += gallery.failed_section(report.failures, total=report.failed, out=report.out)
    lines += gallery.flagged_section(report.flagged, out=report.out, limit=report.listed)
    lines.append(qc.FLAGS_LEGEND)
    return "\n".join(lines)


def write_report(output, *, storage_options=None, cache=None, warn=_log.warning):
    """Write ``OUTPUT/report.html`` (atomically) from the output's tables.

    Parameters
    ----------
    output : segmodel.storage.io.Store
    storage_options : dict, optional
        For the inputs, read again for the thumbnails; default none.
    cache : dict, optional
        Thumbnails already made (see :func:`thumbnails`); filled in.
    warn : callable, optional
        Called with a line for each image whose input cannot be read again (default: a
        warning of the ``segflow`` logger).

    Returns
    -------
    path : str
        The page's URL.
    seconds : float
        How long it took.
    """
    from segmodel.pipeline.report_html import render_html

    t0 = time.perf_counter()
    report = output_report(output, storage_options=storage_options, cache=cache, warn=warn)
    output.write_bytes(REPORT_FILE, render_html(report).encode())
    return f"{output.url.rstrip('/')}/{REPORT_FILE}", round(time.perf_counter() - t0, 3)


__all__ = ["REPORT_BYTES", "REPORT_FILE", "Entry", "Report", "choose", "markdown",
           "output_report", "plots", "run_report", "summary_rows",
           "summary_table", "thumbnails", "write_report"]
