"""The QC gallery's Markdown: every name escaped, the flagged and the failed images listed.

File names are the user's: a newline, ``|``, ``*`` or ``<`` in one must not break a table, start
emphasis or open an HTML tag. :func:`escape` makes any text one line of literal Markdown; the
sections below use it for every name, path and message they show. The thumbnails themselves are
made by :func:`segmodel.pipeline.qc.read_thumbnail`.
"""

import base64
import re
import unicodedata

#: Characters with a meaning in (GitHub-flavoured) Markdown inline text or a table cell.
_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+!|~&$])")
#: Characters of a message shown in a failures row (the whole message is in the table).
MESSAGE_CHARS = 160


def escape(text):
    r"""Make ``text`` one line of literal Markdown, safe in a table cell.

    Control and line-break characters are shown as escapes (a newline as ``\n``), then every
    character that Markdown would interpret is backslash-escaped.

    Parameters
    ----------
    text : object
        Converted with ``str``.

    Returns
    -------
    str

    Examples
    --------
    >>> escape("a|b*.png")
    'a\\|b\\*.png'
    """
    return _SPECIAL.sub(r"\\\1", visible(text))


def visible(text):
    r"""``text`` on one line: control and line-break characters shown as escapes.

    Parameters
    ----------
    text : object
        Converted with ``str``.

    Returns
    -------
    str

    Examples
    --------
    >>> visible("two\nlines")
    'two\\nlines'
    """
    return "".join(_visible(ch) for ch in str(text))


def _visible(ch):
    if unicodedata.category(ch) not in ("Cc", "Cf", "Zl", "Zp"):
        return ch
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
    return named.get(ch, f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")


def shorten(text, limit=MESSAGE_CHARS):
    """``text`` cut to ``limit`` characters, an ellipsis marking the cut.

    Parameters
    ----------
    text : str
    limit : int, optional
        The most characters kept (default :data:`MESSAGE_CHARS`).

    Returns
    -------
    str
    """
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def thumbnail_row(png, *, image_id, n_objects, qc_flags, mask):
    """One row of the gallery's table: the thumbnail, the image, its count, flags and mask.

    Parameters
    ----------
    png : bytes
        The thumbnail, embedded as a data URL.
    image_id : str
    n_objects : int
    qc_flags : str or None
        Joined flags; empty (or missing) shows ``ok``.
    mask : str
        The mask's full path or URL.

    Returns
    -------
    str
    """
    data = base64.b64encode(png).decode()
    name = escape(image_id)
    flags = escape(qc_flags) if isinstance(qc_flags, str) and qc_flags else "ok"
    return (f"| ![{name}](data:image/png;base64,{data}) | {name} | {n_objects} | {flags} | "
            f"{escape(mask)} |")


def flagged_section(flagged, *, out, limit):
    """The flagged images' table, the first ``limit`` of them.

    Parameters
    ----------
    flagged : pandas.DataFrame
        Images rows with QC flags (``image_id``, ``n_objects``, ``qc_flags``).
    out : str
        The output's URL, to say where the rest are.
    limit : int
        Rows listed.

    Returns
    -------
    list of str
        Markdown lines; none when no image is flagged.
    """
    if not len(flagged):
        return []
    lines = ["## Flagged images", "", "| image | objects | QC flags |", "|---|---|---|"]
    lines += [f"| {escape(r.image_id)} | {r.n_objects} | {escape(r.qc_flags)} |"
              for r in flagged.head(limit).itertuples()]
    if len(flagged) > limit:
        lines.append(f"\n... and {len(flagged) - limit} more: see {escape(out)}/images/.")
    return lines + [""]


def failed_section(failures, *, total, out):
    """The failed images' table: name, stage and the message shortened.

    Parameters
    ----------
    failures : sequence of dict
        Failures rows (``image_id``, ``stage``, ``error_type``, ``message``), the first of the
        run's.
    total : int
        The run's failed images (at least ``len(failures)``).
    out : str
        The output's URL, to say where every row is.

    Returns
    -------
    list of str
        Markdown lines; none when no image failed.
    """
    if not total:
        return []
    lines = ["## Failed images", "", "| image | stage | error |", "|---|---|---|"]
    lines += [f"| {escape(f['image_id'])} | {escape(f['stage'])} | "
              f"{escape(shorten(f['error_type'] + ': ' + f['message']))} |" for f in failures]
    rest = total - len(failures)
    more = f"... and {rest} more; " if rest > 0 else ""
    return lines + ["", f"{more}every message in full: {escape(out)}/failures/.", ""]
