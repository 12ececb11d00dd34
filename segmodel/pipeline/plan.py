"""Planning a run: list the input, reconcile earlier outputs, cut what is not done into shards.

A shard (:class:`ShardJob`) is the unit of work: a few dozen images read, segmented and written
together, so their tiles share fixed-shape batches and a rerun redoes at most a shard. TIFFs
above ``tiled_above`` pixels are jobs of their own, segmented block by block
(:mod:`segmodel.pipeline.large`).
"""

import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone

from segmodel.inference import blockwise
from segmodel.pipeline import outputs
from segmodel.storage import export
from segmodel.storage.io import scan_images


@dataclass(frozen=True)
class ShardJob:
    """One unit of work: its images and where their masks go.

    Attributes
    ----------
    name : str
        The shard's name in the tables (``<run stamp>-<k>``; ``-L<k>`` for a huge image).
    index, total : int
        Its position among the run's jobs of its kind (1-based), for progress and logs.
    refs : tuple of ImageRef
    mask_paths : dict
        ``{image_id: mask path relative to the output}``.
    superseded : dict, optional
        ``{image_id: mask path}`` of earlier masks of these images at another path (another
        mask format), removed once the job commits (default: none).
    """

    name: str
    index: int
    total: int
    refs: tuple
    mask_paths: dict
    superseded: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    """What a run will do.

    Attributes
    ----------
    found, skipped : int
        Images under the input; of those, images already done under the run's configuration.
    jobs : tuple of ShardJob
        The shards to segment.
    large_jobs : tuple of ShardJob
        One job per image segmented block by block.
    span : tuple of float
        ``(start, end)`` wall-clock time of planning (:func:`time.time`).
    not_listed : dict
        What the listing of a local input skipped, ``{reason: count}`` (symbolic links leading
        outside it, loops, broken links, unreadable folders; see
        :func:`segmodel.storage.io.scan_images`); empty when nothing was.
    """

    found: int
    skipped: int
    jobs: tuple
    large_jobs: tuple
    span: tuple
    not_listed: dict = field(default_factory=dict)

    @property
    def to_segment(self):
        """Images the run will segment (shards and huge images)."""
        return sum(len(j.refs) for j in self.jobs) + len(self.large_jobs)


def run_stamp():
    """A run's stamp: its UTC start time, ``YYYYmmddTHHMMSSffffffZ`` (shard names start with it)."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


def plan_run(config, stamp):
    """List the input, reconcile the output's tables and cut the images to do into jobs.

    Parameters
    ----------
    config : RunConfig
    stamp : str
        The run's stamp (:func:`run_stamp`).

    Returns
    -------
    Plan
    """
    t0 = time.time()
    options = config.options
    listing = scan_images(config.input, tuple(options.patterns),
                          follow_external_links=options.follow_external_links)
    refs = listing.refs
    recorded = {}
    latest = outputs.reconcile(config.output, masks=recorded)
    if options.mask_format == "ome-zarr":
        export.remove_partial(config.output)
    todo = outputs.pending(refs, latest, config.config_key, retry_failed=options.retry_failed)
    masks = outputs.mask_paths([r.image_id for r in refs], options.mask_format, recorded)
    old = superseded_masks([r.image_id for r in todo], masks, recorded)
    todo, big = find_large(config, todo)
    size = options.shard_size
    total = -(-len(todo) // size)

    def job(name, k, n, refs):
        ids = [r.image_id for r in refs]
        return ShardJob(name, k + 1, n, tuple(refs), {i: masks[i] for i in ids},
                        {i: old[i] for i in ids if i in old})

    jobs = tuple(job(f"{stamp}-{k:05d}", k, total, todo[i : i + size])
                 for k, i in enumerate(range(0, len(todo), size)))
    large_jobs = tuple(job(f"{stamp}-L{k:05d}", k, len(big), [r]) for k, r in enumerate(big))
    return Plan(found=len(refs), skipped=len(refs) - len(todo) - len(big), jobs=jobs,
                large_jobs=large_jobs, span=(t0, time.time()), not_listed=listing.skipped)


def superseded_masks(image_ids, masks, recorded):
    """The earlier masks that the images to segment leave behind: another format's path.

    Parameters
    ----------
    image_ids : list of str
        The images to segment.
    masks : dict
        ``{image_id: mask path}`` of this run (:func:`segmodel.pipeline.outputs.mask_paths`).
    recorded : dict
        ``{image_id: mask path}`` of the images done before (see
        :func:`segmodel.pipeline.outputs.reconcile`).

    Returns
    -------
    dict
        ``{image_id: earlier mask path}`` where it differs from the new one and is no other
        image's mask, new or recorded.
    """
    new, owners = set(masks.values()), Counter(recorded.values())
    return {i: recorded[i] for i in image_ids
            if i in recorded and recorded[i] != masks[i] and recorded[i] not in new
            and owners[recorded[i]] == 1}


def find_large(config, refs):
    """Split ``refs`` into ``(regular, large)``: TIFFs over ``tiled_above`` pixels are large.

    Only TIFFs bigger than ``min(1 MB, tiled_above / 64)`` bytes have their header read (one small
    read each); smaller files cannot hold that many pixels at any usual compression.

    Parameters
    ----------
    config : RunConfig
    refs : list of ImageRef

    Returns
    -------
    regular, large : list of ImageRef
    """
    regular, big = [], []
    tiled_above = config.options.tiled_above
    probe_above = min(1_000_000, tiled_above // 64)
    for ref in refs:
        shape = None
        if ref.size > probe_above and ref.image_id.lower().endswith((".tif", ".tiff")):
            with config.input.fs.open(ref.path, "rb") as fh:
                shape = blockwise.tiff_shape(fh)
        (big if shape and shape[0] * shape[1] > tiled_above else regular).append(ref)
    return regular, big


@dataclass(frozen=True)
class ShardResult:
    """What processing one job wrote.

    Attributes
    ----------
    shard : str
    index : int
    images, failed, objects : int
        Rows written to the images, failures and objects tables.
    seconds : float
        The images' own seconds (read to tabulate), summed.
    timings : dict
        ``{stage: seconds}`` summed over the images (see :data:`segmodel.pipeline.clock.STAGES`).
    span : tuple of float
        ``(start, end)`` wall-clock time of the job (:func:`time.time`).
    failures : tuple of dict
        The failures rows written (for the caller's log).
    """

    shard: str
    index: int
    images: int
    failed: int
    objects: int
    seconds: float
    timings: dict
    span: tuple
    failures: tuple = ()
