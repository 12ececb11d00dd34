"""The output layout, table schemas, shard commits and rerun bookkeeping.

Layout under OUTPUT::

    labels/<image id, extension replaced>.tif   instance masks (or .png, .ome.zarr)
    outlines/<image id, ext. replaced>.geojson  object outlines (with outlines='geojson')
    objects/<shard>.parquet                     one row per object
    intensities/<shard>.parquet                 one row per object and channel
    images/<shard>.parquet                      one row per segmented image
    failures/<shard>.parquet                    one row per image that failed
    classes/<shard>.parquet                     semantic models: one row per image and class
    run.json                                    the last run that segmented an image: parameters,
                                                model and counts
    runs/<run stamp>.json                       every run's record, the same fields
    _index.parquet                              current record of every image (derived: see
                                                INDEX; removing it only costs a slower rerun)
    run.lock                                    while a run writes here (segmodel.storage.lease)

A shard's parts are written objects, intensities, failures, then images: the images part is
the commit marker. :func:`reconcile` removes parts of shards that never committed and rows
superseded by a newer shard (a changed image reprocessed), so every image has exactly one
current record, and keeps the index of those records, so that a rerun reads one file plus the
parts of the shards committed since, not two parts of every shard. Every part of a table has
the table's declared columns, whatever its images' channels.
"""

import hashlib
import io
import posixpath
from collections import Counter

import pandas as pd

from segmodel.inference.heads import CLASS_SCHEMA
from segmodel.inference.measure import INTENSITY_SCHEMA, OBJECT_SCHEMA

#: Write order: images last (the commit marker).
TABLES = ("objects", "intensities", "classes", "failures", "images")
#: Tables whose parts only some runs write (``classes``: semantic models).
OPTIONAL = ("classes",)

IMAGE_SCHEMA = {
    "image_id": "string", "uri": "string", "height": "int64", "width": "int64",
    "n_objects": "int64", "mean_object_area": "float64", "foreground_fraction": "float64",
    "scale": "float64", "nucleus_diameter": "float64", "model_name": "string",
    "model_fingerprint": "string",
    "segflow_version": "string", "seconds": "float64", "mask_path": "string",
    "fingerprint": "string", "config_key": "string", "shard": "string",
    "qc_flags": "string",
    "pixel_size_um": "float64",
}
FAILURE_SCHEMA = {
    "image_id": "string", "uri": "string", "stage": "string", "error_type": "string",
    "message": "string", "fingerprint": "string", "config_key": "string", "shard": "string",
}
SCHEMAS = {"objects": OBJECT_SCHEMA, "intensities": INTENSITY_SCHEMA, "images": IMAGE_SCHEMA,
           "failures": FAILURE_SCHEMA, "classes": CLASS_SCHEMA}
MASK_FORMATS = ("tif", "png", "ome-zarr")
#: File name ending of each mask format.
MASK_SUFFIXES = {"tif": "tif", "png": "png", "ome-zarr": "ome.zarr"}


def table(name, rows):
    """Build table ``name`` from rows, with its declared columns and dtypes.

    Parameters
    ----------
    name : {'objects', 'intensities', 'images', 'failures', 'classes'}
    rows : list of dict
        One dict per row; an empty list gives zero rows with every column.

    Returns
    -------
    pandas.DataFrame
    """
    schema = SCHEMAS[name]
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in schema.items()})
    return pd.DataFrame(rows, columns=list(schema)).astype(schema)


def mask_paths(image_ids, mask_format="tif", recorded=None):
    """Give each image a mask path under ``labels/``; no two images share one.

    ``a.png`` -> ``labels/a.tif``; with both ``a.png`` and ``a.tif`` present they become
    ``labels/a.png.tif`` and ``labels/a.tif.tif`` so neither overwrites the other (a path
    that still falls on another's, as ``a.png`` beside ``a.png.tif`` does, gets a hash of its
    id: ``labels/a.png-<8 hex>.tif``). Ids are
    made safe by :func:`safe_relpath`: no id can name a path outside ``labels/``.

    ``recorded``: ``{image_id: mask path}`` of images done in earlier runs (see
    :func:`reconcile`). An image keeps its recorded path (in this mask format), and no other
    image is given it, so a new neighbour never takes a finished image's mask.

    Parameters
    ----------
    image_ids : list of str
    mask_format : {'tif', 'png', 'ome-zarr'}, optional
        Default ``'tif'``.
    recorded : dict, optional
        ``{image_id: mask path}`` of images done in earlier runs.

    Returns
    -------
    dict
        ``{image_id: mask path relative to the output}``.

    Raises
    ------
    ValueError
        An unknown ``mask_format``.
    """
    if mask_format not in MASK_FORMATS:
        raise ValueError(f"mask_format must be one of {MASK_FORMATS}. Received: {mask_format!r}")
    stems = {}
    for image_id in image_ids:
        stems.setdefault(posixpath.splitext(image_id)[0], []).append(image_id)
    suffix = MASK_SUFFIXES[mask_format]
    owner = {}  # recorded path -> its image: reserved for it
    for image_id, path in (recorded or {}).items():
        if path.endswith(f".{suffix}"):
            owner.setdefault(path, image_id)
    kept = {image_id: path for path, image_id in owner.items()}
    out = {}
    for stem, ids in stems.items():
        for image_id in ids:
            base = stem if len(ids) == 1 else image_id
            out[image_id] = kept.get(image_id, f"labels/{safe_relpath(base)}.{suffix}")
    counts = Counter(out.values())
    for image_id, path in out.items():  # "a.png" beside "a.png.tif", or a recorded path
        if owner.get(path, image_id) != image_id or (counts[path] > 1 and image_id not in kept):
            digest = hashlib.sha1(image_id.encode()).hexdigest()[:8]
            out[image_id] = f"labels/{safe_relpath(image_id)}-{digest}.{suffix}"
    return out


def safe_relpath(name):
    r"""Make a relative path that stays under its parent folder, whatever ``name`` holds.

    Ordinary names pass unchanged. ``%`` and ``\\`` are percent-encoded, then empty, ``.``
    and ``..`` segments (from absolute-looking names, ``//`` or ``..``) are encoded as
    ``%2F``, ``%2E`` and ``%2E%2E``, so distinct names stay distinct and none climbs out.

    Parameters
    ----------
    name : str

    Returns
    -------
    str
    """
    special = {"": "%2F", ".": "%2E", "..": "%2E%2E"}
    parts = name.replace("%", "%25").replace("\\", "%5C").split("/")
    return "/".join(special.get(part, part) for part in parts)


def encode_parquet(df):
    """Encode a DataFrame as Parquet bytes (no index column).

    Parameters
    ----------
    df : pandas.DataFrame

    Returns
    -------
    bytes
    """
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def write_shard(store, shard, tables):
    """Write a shard's table parts, the images part last (the shard's commit).

    Parameters
    ----------
    store : Store
        The run's output.
    shard : str
        The shard's name: each part is ``<table>/<shard>.parquet``.
    tables : dict
        ``{'objects': df, 'intensities': df, 'failures': df, 'images': df}``, and
        ``'classes'`` where given.
    """
    for name in TABLES:
        if name in OPTIONAL and name not in tables:
            continue
        store.write_bytes(f"{name}/{shard}.parquet", encode_parquet(tables[name]))


def _read_part(store, name, shard, columns=None):
    data = store.read_bytes(store.path(name, f"{shard}.parquet"))
    return pd.read_parquet(io.BytesIO(data), columns=columns)


def read_parts(store, names, shards, columns=None):
    """Read the table parts of ``shards``, fetched in chunks.

    The parts are fetched in chunks (concurrently from object stores, see
    :meth:`segmodel.storage.io.Store.read_many`): a rerun over a million images reads tens of
    thousands of parts.

    Parameters
    ----------
    store : Store
    names : list of str
        Table names.
    shards : list of str
        Shard names.
    columns : list of str or callable, optional
        The columns to decode, or a function of the table name that gives them (default: all).

    Returns
    -------
    list of tuple
        ``(shard, name, pyarrow.Table or None)`` for each shard, then each table name, in that
        order; None where the part does not exist.
    """
    import pyarrow.parquet as pq

    keys = [(shard, name) for shard in shards for name in names]
    data = store.read_many(store.path(name, f"{shard}.parquet") for shard, name in keys)
    for (shard, name), (_, raw) in zip(keys, data):
        if raw is None:
            yield shard, name, None
            continue
        cols = columns(name) if callable(columns) else columns
        yield shard, name, pq.ParquetFile(io.BytesIO(raw)).read(columns=cols)


def _shards(store, name):
    return [posixpath.basename(p)[: -len(".parquet")] for p in store.list(name, ".parquet")]


def reconcile(store, masks=None):
    """Make the tables consistent; return the current record of every image.

    Removes temporary files of interrupted writes and parts of uncommitted shards, then rows
    of any image that a newer shard holds.

    Parameters
    ----------
    store : Store
        The output.
    masks : dict, optional
        Filled with ``{image_id: mask path}`` of the images whose current record is done.

    Returns
    -------
    dict
        ``{image_id: (status, fingerprint, config_key)}`` with status ``'done'`` or
        ``'failed'``.
    """
    store.remove_temporaries()
    committed = _shards(store, "images")
    for name in TABLES[:-1]:
        for shard in set(_shards(store, name)) - set(committed):
            store.remove(store.path(name, f"{shard}.parquet"))
    latest, owner, seen, paths, counts = {}, {}, {}, {}, {}
    index = read_index(store)
    covered = index or {}
    # rewritten when shards were added or removed since, or rows superseded
    changed = index is None or bool(set(covered) - set(committed))
    # names start with a UTC timestamp: sorted = oldest first
    committed = sorted(committed)
    parts = read_parts(store, ("images", "failures"), [s for s in committed if s not in covered],
                       lambda name: _KEY_COLUMNS + _PART_EXTRA * (name == "images"))
    for shard in committed:
        ids = seen.setdefault(shard, [])
        if shard in covered:  # the index holds this shard's current records
            records = [covered[shard]]
        else:  # a shard committed since the index was written: read from its parts
            records = [_records(next(parts), status) for status in ("done", "failed")]
            changed = changed or any(columns[0] for columns in records)
        for columns in records:
            for image_id, status, fp, key, path, n in zip(*columns):
                latest[image_id] = (status, fp, key)
                owner[image_id] = shard
                ids.append(image_id)
                paths[image_id], counts[image_id] = path, n
    for shard, ids in seen.items():
        stale = {i for i in ids if owner[i] != shard}
        if stale:
            _drop_rows(store, shard, stale)
            changed = True
    if changed and latest:  # after the stale rows are gone: it never lists a row that is not
        _write_index(store, latest, owner, paths, counts)
    elif changed and index is not None:
        store.remove(store.path(INDEX))
    if masks is not None:
        masks.update({i: p for i, p in paths.items() if p and latest[i][0] == "done"})
    return latest


#: The index of current records: one row per image (its status, fingerprint, configuration,
#: mask, object count and shard), rewritten by :func:`reconcile` whenever shards were added or
#: rows superseded. A rerun reads it and only the parts of shards committed since, instead of
#: two parts of every shard. It is derived data: without it (or unreadable) the parts are read.
INDEX = "_index.parquet"
_KEY_COLUMNS = ["image_id", "fingerprint", "config_key"]
_PART_EXTRA = ["mask_path", "n_objects"]


def _records(item, status):
    """Columns ``(ids, statuses, fingerprints, keys, mask paths, counts)`` of one part."""
    part = item[2]
    if part is None:  # a committed shard's part lost (an older segflow's interrupted
        return [], [], [], [], [], []  # clean-up): its rows are gone, the images are redone
    cols = part.to_pydict()
    none = [None] * part.num_rows
    return (cols["image_id"], [status] * part.num_rows, cols["fingerprint"],
            cols["config_key"], cols.get("mask_path", none), cols.get("n_objects", none))


def read_index(store):
    """Read the index of current records (see :data:`INDEX`).

    Parameters
    ----------
    store : Store
        The output.

    Returns
    -------
    dict or None
        ``{shard: (ids, statuses, fingerprints, keys, mask paths, counts)}``, or None where there
        is none or it cannot be read.
    """
    import pyarrow.parquet as pq

    try:
        data = store.read_bytes(store.path(INDEX))
    except FileNotFoundError:
        return None
    names = ("image_id", "status", "fingerprint", "config_key", "mask_path", "n_objects")
    try:
        table = pq.ParquetFile(io.BytesIO(data)).read(columns=[*names, "shard"]).to_pydict()
    except Exception:  # damaged, or of another layout: rebuilt from the parts, never trusted
        return None
    out = {}
    for row, shard in enumerate(table["shard"]):
        if shard not in out:
            out[shard] = tuple([] for _ in names)
        for column, name in zip(out[shard], names):
            column.append(table[name][row])
    return out


def _write_index(store, latest, owner, paths, counts):
    ids = list(latest)
    df = pd.DataFrame({
        "image_id": pd.array(ids, dtype="string"),
        "status": pd.array([latest[i][0] for i in ids], dtype="string"),
        "fingerprint": pd.array([latest[i][1] for i in ids], dtype="string"),
        "config_key": pd.array([latest[i][2] for i in ids], dtype="string"),
        "mask_path": pd.array([paths[i] for i in ids], dtype="string"),
        "n_objects": pd.array([counts[i] for i in ids], dtype="Int64"),
        "shard": pd.array([owner[i] for i in ids], dtype="string")})
    store.write_bytes(INDEX, encode_parquet(df))


def _drop_rows(store, shard, stale):
    """Rewrite ``shard``'s parts without rows of ``stale`` image ids (images part last)."""
    names = [n for n in TABLES if n == "images" or store.exists(n, f"{shard}.parquet")]
    ids = {name: _read_part(store, name, shard, ["image_id"])["image_id"] for name in names}
    if not any(ids[name].isin(stale).any() for name in names):
        return
    live = [n for n in ("images", "failures") if n in ids and (~ids[n].isin(stale)).any()]
    if not live:
        # every row superseded: the whole shard goes, its marker first, so an interruption
        # leaves uncommitted parts (removed by the next reconcile), never a broken shard
        for name in ["images"] + [n for n in names if n != "images"]:
            store.remove(store.path(name, f"{shard}.parquet"))
        return
    for name in names:
        if ids[name].isin(stale).any():
            df = _read_part(store, name, shard)
            store.write_bytes(f"{name}/{shard}.parquet",
                              encode_parquet(df[~df["image_id"].isin(stale)]))


def pending(refs, latest, config_key, *, retry_failed=False):
    """Keep the refs without a current record for their fingerprint and configuration.

    An image that failed is tried again when its file or the configuration changed, or with
    ``retry_failed``; an unchanged bad file is not decoded again on every run.

    Parameters
    ----------
    refs : list of ImageRef
    latest : dict
        ``{image_id: (status, fingerprint, config_key)}`` from :func:`reconcile`.
    config_key : str
        The run's configuration key.
    retry_failed : bool, optional
        Also keep images whose unchanged file failed before (default False).

    Returns
    -------
    list of ImageRef
    """
    current = {"done", "failed"} - ({"failed"} if retry_failed else set())
    return [r for r in refs
            if not (r.image_id in latest and latest[r.image_id][0] in current
                    and latest[r.image_id][1:] == (r.fingerprint, config_key))]


def read_table(url, name, storage_options=None):
    """Read one table of an output as a DataFrame whose columns are the union over its parts.

    Every part of a table has the table's declared columns (:data:`SCHEMAS`), so
    ``pandas.read_parquet`` on the folder reads them whole too; the union keeps the columns of
    parts written by older segflow versions.

    Parameters
    ----------
    url : str
        The output folder or URL.
    name : {'objects', 'intensities', 'images', 'failures', 'classes'}
    storage_options : dict, optional
        Passed to fsspec.

    Returns
    -------
    pandas.DataFrame
        Empty, with the table's declared columns, where the output has no part of it.
    """
    import pyarrow as pa
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    from segmodel.storage.io import Store

    store = Store(url, storage_options or {})
    parts = store.list(name, ".parquet")
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in SCHEMAS[name].items()})
    fs = store.fs
    schema = pa.unify_schemas([pq.read_schema(p, filesystem=fs) for p in parts])
    return ds.dataset(parts, schema=schema, format="parquet", filesystem=fs).to_table() \
        .to_pandas()
