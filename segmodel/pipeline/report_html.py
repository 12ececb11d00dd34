"""``OUTPUT/report.html``: a :class:`~segmodel.pipeline.report.Report` as one page.

The page holds everything it shows: thumbnails and plots as ``data:image/png`` URLs, its style
inline; no script, font, stylesheet or image is fetched from anywhere, so it opens offline from
a bucket download or a file share. Every text from the tables (file names, flags, messages,
paths, parameters) is HTML-escaped, control characters shown as escapes (:func:`text`).
"""

import base64
import html
import json
import re
from datetime import datetime, timezone
from urllib.parse import urlsplit, urlunsplit

from segmodel import __version__
from segmodel.pipeline import qc
from segmodel.pipeline.gallery import shorten, visible

_STYLE = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;
max-width:1200px;padding:0 16px;color:#222}
h1{font-size:22px;margin-bottom:4px} h2{font-size:18px;margin-top:28px;
border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0} td,th{border:1px solid #ddd;padding:3px 8px;
text-align:left;vertical-align:top} th{background:#f4f4f4}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{width:264px;border:1px solid #ddd;padding:4px;font-size:12px;overflow-wrap:anywhere}
.card img{display:block;max-width:256px;margin:0 auto} .flag{color:#b00020;font-weight:600}
.plots{display:flex;flex-wrap:wrap;gap:16px} figure{margin:0}
figcaption{font-weight:600} .note{color:#555} code{background:#f4f4f4;padding:0 3px}
"""


def text(value):
    """``value`` as HTML text: on one line, control characters shown, then escaped.

    Parameters
    ----------
    value : object
        Converted with ``str``; None and missing values give ``''``.

    Returns
    -------
    str
    """
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return html.escape(visible(value), quote=True)


def public_url(url):
    """``url`` without a user name or password (``ftp://u:p@host/x`` -> ``ftp://host/x``).

    Parameters
    ----------
    url : str

    Returns
    -------
    str
    """
    parts = urlsplit(str(url))
    if "@" not in parts.netloc:
        return str(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def render_html(report):
    """The page of a report of the whole output.

    Parameters
    ----------
    report : segmodel.pipeline.report.Report

    Returns
    -------
    str
        A complete HTML document.
    """
    made = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = [f"<h1>{text(report.title)}</h1>",
            f'<p class="note">Made {made} by segflow {text(__version__)} from the tables of '
            f"{text(public_url(report.out))}: every run's images, not only the last run's.</p>",
            "<h2>Output</h2>", _pairs(report.totals), *_last_run(report), *_plots(report),
            *_gallery(report), *_flagged(report), *_failures(report), *_runs(report),
            *_parameters(report.record), *_prefect(report.record),
            f'<p class="note">{_code(text(qc.FLAGS_LEGEND))}</p>']
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{text(report.title)}</title><style>{_STYLE}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def _code(escaped):
    """Markdown-style ``code`` spans of already escaped text as ``<code>``."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", escaped)


def _cell(value):
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return f'<td class="n">{text(value)}</td>' if numeric else f"<td>{text(value)}</td>"


def _table(header, rows):
    head = "".join(f"<th>{text(h)}</th>" for h in header)
    body = "\n".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>\n{body}</table>"


def _pairs(pairs):
    return _table(["", ""], pairs).replace("<tr><th></th><th></th></tr>\n", "")


def _last_run(report):
    if not report.summary:
        return ["<h2>Last run</h2>", "<p>No run record in this output.</p>"]
    rows = [(k, v) for k, v in report.summary if k not in ("run", "output")]
    model = (report.record or {}).get("model", {})
    rows += [("model", model.get("name", "")), ("model fingerprint", model.get("fingerprint", "")),
             ("engine", f"{model.get('engine', '')} ({model.get('precision', '')})"),
             ("segflow version", (report.record or {}).get("segflow_version", "")),
             ("finished", (report.record or {}).get("finished_at", ""))]
    return [f"<h2>Last run: {text(dict(report.summary).get('run', ''))}</h2>", _pairs(rows)]


def _png(data, alt):
    return f'<img alt="{text(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _plots(report):
    if not report.plots:
        return []
    figures = [f"<figure><figcaption>{text(caption)}</figcaption>{_png(data, caption)}</figure>"
               for caption, data in report.plots]
    return ["<h2>Plots</h2>", '<div class="plots">', *figures, "</div>"]


def _gallery(report):
    out = ["<h2>QC gallery</h2>",
           '<p class="note">Outlines of the objects found, drawn over the image: flagged images '
           "first, then a spread of the others from fewest to most objects.</p>"]
    if not report.gallery:
        return [*out, "<p>No image to show.</p>"]
    cards = []
    for e in report.gallery:
        flags = f'<span class="flag">{text(e.qc_flags)}</span>' if e.qc_flags else "ok"
        cards.append(f'<div class="card">{_png(e.png, e.image_id)}<b>{text(e.image_id)}</b><br>'
                     f"{e.n_objects} objects; {flags}<br>mask: {text(e.mask)}</div>")
    missing = (f'<p class="note">{report.missing} chosen images left out: their input could '
               "not be read again.</p>") if report.missing else ""
    return [*out, '<div class="cards">', *cards, "</div>", missing]


def _more(shown, total, where):
    if total <= shown:
        return ""
    return f'<p class="note">... and {total - shown} more: see {text(where)}.</p>'


def _flagged(report):
    flagged = report.flagged
    if not len(flagged):
        return ["<h2>Flagged images</h2>", "<p>No image is flagged.</p>"]
    rows = [(r.image_id, int(r.n_objects), r.qc_flags)
            for r in flagged.head(report.listed).itertuples()]
    return [f"<h2>Flagged images ({len(flagged)})</h2>",
            _table(["image", "objects", "QC flags"], rows),
            _more(len(rows), len(flagged), f"{report.out}/images/")]


def _failures(report):
    if not report.failed:
        return ["<h2>Failed images</h2>", "<p>No image failed.</p>"]
    rows = [(f["image_id"], f["stage"], shorten(f"{f['error_type']}: {f['message']}"))
            for f in report.failures]
    return [f"<h2>Failed images ({report.failed})</h2>",
            _table(["image", "stage", "message"], rows),
            _more(len(rows), report.failed, f"{report.out}/failures/ (every message in full)")]


def _runs(report):
    if not report.runs:
        return []
    rows = [(r.get("run_stamp", ""), (r.get("prefect_flow_run") or {}).get("name", ""),
             r["counts"].get("images", ""), r["counts"].get("failed", ""),
             r["counts"].get("skipped", ""), r["counts"].get("objects", ""),
             r["counts"].get("seconds", "")) for r in report.runs]
    total = dict(report.totals).get("runs", len(rows))
    return [f"<h2>Runs ({total})</h2>",
            _table(["run stamp", "Prefect flow run", "segmented", "failed", "skipped",
                    "objects", "seconds"], rows),
            _more(len(rows), total, f"{report.out}/runs/")]


def _parameters(record):
    """The last run's parameters; storage options (credentials) are never shown."""
    if not record:
        return []
    params = {k: v for k, v in record.get("parameters", {}).items() if k != "storage_options"}
    rows = [(k, public_url(v) if k in ("input", "output", "model") and v else
             json.dumps(v) if not isinstance(v, str) else v) for k, v in sorted(params.items())]
    return ["<h2>Parameters of the last run</h2>", _pairs(rows)]


def _prefect(record):
    run = (record or {}).get("prefect_flow_run") or {}
    later = ("A run made with segflow's temporary server is kept in the Prefect database under "
             "<code>PREFECT_HOME</code> (default <code>~/.prefect</code>): run <code>prefect "
             "server start</code> with the same <code>PREFECT_HOME</code> and open ")
    if not run.get("id"):
        return ["<h2>In the Prefect UI</h2>",
                "<p>The last run has no Prefect flow run (it was made with "
                "<code>segmodel.api.run</code>, without Prefect). Runs of <code>segflow "
                f"run</code> are shown in the Prefect UI. {later}"
                "<code>http://127.0.0.1:4200/runs</code>.</p>"]
    return ["<h2>In the Prefect UI</h2>",
            f"<p>The last run is flow run <b>{text(run.get('name'))}</b> (id "
            f"{text(run['id'])}) of the flow <code>segment-images</code>, on the Prefect server "
            "it ran on, with its progress, logs, summary table and QC gallery. "
            f"{later}<code>http://127.0.0.1:4200/runs/flow-run/{text(run['id'])}</code>.</p>"]


__all__ = ["public_url", "render_html", "text"]
