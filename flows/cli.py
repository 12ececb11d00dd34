"""The ``segflow`` command: a thin layer that builds flow parameters and calls the flows."""

import argparse
import atexit
import contextlib
import json
import os
import sys
import time
from pathlib import Path

SAMPLES = Path(__file__).resolve().parents[1] / "segmodel" / "samples"

# The CLI prints its own progress; Prefect's INFO lines still reach the API (and the UI).
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")



def _parser():
    p = argparse.ArgumentParser(prog="segflow", description="Batch nuclei segmentation.")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="segment every image under INPUT into OUTPUT")
    run.add_argument("input", help="folder or fsspec URL of images (s3://, gs://, memory://...)")
    run.add_argument("output", help="folder or fsspec URL for masks and tables")
    _add_run_options(run)

    serve = sub.add_parser("serve", help="serve a deployment that segments new images of INPUT "
                                         "on a schedule (needs a Prefect server)")
    serve.add_argument("input", help="folder or fsspec URL of images")
    serve.add_argument("output", help="folder or fsspec URL for masks and tables")
    when = serve.add_mutually_exclusive_group()
    when.add_argument("--cron", default=None, help='cron schedule, e.g. "0 * * * *" (hourly)')
    when.add_argument("--interval", type=float, default=None, help="seconds between runs")
    serve.add_argument("--name", default="scheduled",
                       help="deployment name (default: scheduled): segment-images/NAME")
    _add_run_options(serve)

    demo = sub.add_parser("demo", help="segment the sample images shipped with segflow")
    demo.add_argument("output", nargs="?", default="segflow-demo",
                      help="output folder (default: ./segflow-demo)")
    _add_run_options(demo)

    ev = sub.add_parser("evaluate", help="score predicted masks against ground-truth masks")
    ev.add_argument("pred", help="segflow OUTPUT (its labels/) or a folder of label masks")
    ev.add_argument("truth", help="folder of ground-truth label masks, paired by file name")
    ev.add_argument("--groups", default=None, help="CSV with an id column and a group column")
    ev.add_argument("--group-column", default="modality")
    ev.add_argument("--out", default=None, help="write per-image scores to this Parquet file")
    ev.add_argument("--storage-options", default="{}", help="JSON passed to fsspec")

    train = sub.add_parser("train", help="train the nuclei model (resumes an interrupted run)")
    train.add_argument("out_dir", nargs="?", default="train-runs/nuclei")
    train.add_argument("--data-dir", default=None, help="DSB2018-style dataset folder")
    train.add_argument("--steps", type=int, default=2600)
    train.add_argument("--steps-per-epoch", type=int, default=100)
    train.add_argument("--learning-rate", type=float, default=2e-3)
    train.add_argument("--object-diameter", type=float, default=24.0,
                       help="median nucleus diameter training images are resized to (0: as is)")
    train.add_argument("--init", default="", help="start from this .keras model's weights")
    train.add_argument("--seed", type=int, default=0, help="seed of sampling and augmentation")
    train.add_argument("--images", default=None,
                       help="folder of your own images (instead of --data-dir)")
    train.add_argument("--labels", default=None, help="folder of their instance label images, "
                                                      "paired by file stem")
    train.add_argument("--kind", choices=["instances", "binary", "semantic"], default="instances",
                       help="output kind of the trained bundle (default: instances)")
    train.add_argument("--name", default="", help="the bundle's name in its spec")
    train.add_argument("--filters", default="16,32,64,128",
                       help="filters per U-Net level, comma-separated (default: 16,32,64,128)")
    train.add_argument("--bottleneck", type=int, default=128,
                       help="filters at the lowest resolution (default: 128)")
    train.add_argument("--patch", type=int, default=128,
                       help="edge of the training patches in pixels, a multiple of 2**levels "
                            "(default: 128)")
    train.add_argument("--batch-size", type=int, default=16,
                       help="patches per step (default: 16)")
    train.add_argument("--contact-weight", type=float, default=0.0,
                       help="extra loss weight where two nuclei touch (default: 0, none)")

    model = sub.add_parser("model", help="model bundles (a .keras file and its spec)")
    model_sub = model.add_subparsers(dest="model_command", required=True)
    inspect = model_sub.add_parser("inspect", help="print a bundle's spec and check it against "
                                                   "its model (exit 1 on any problem)")
    inspect.add_argument("bundle", help="a .keras file with its spec beside it, or their folder")
    inspect.add_argument("--trust-model", action="store_true",
                         help="load a model that carries Python code; only for files you trust")
    return p


def _add_run_options(p):
    p.add_argument("--storage-options", default="{}", help="JSON passed to fsspec")
    p.add_argument("--pattern", action="append", dest="patterns",
                   help="glob pattern of image files (repeatable; default: common image types)")
    p.add_argument("--shard-size", type=int, default=32,
                   help="images per shard, the unit of work (default: 32)")
    p.add_argument("--batch-size", type=int, default=8,
                   help="tiles per model call (default: 8; 32-64 on a GPU)")
    p.add_argument("--cpu-workers", type=int, default=0,
                   help="worker processes for post-processing and measuring, overlapped with "
                        "the model (default 0: in the task's thread; use with spare cores)")
    p.add_argument("--scale", default=None,
                   help="'auto' (default: each image's nucleus size is estimated and images "
                        "whose nuclei the model does not work at are resized), or a resize "
                        "factor (1.0: the image as is)")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: average over flips (4x model time)")
    p.add_argument("--tile-size", type=int, default=None,
                   help="tile edge (default: the model's, 256; a multiple of 16, 80 or more)")
    p.add_argument("--mask-format", choices=["tif", "png", "ome-zarr"], default="tif",
                   help="label mask format (ome-zarr: NGFF labels with a pyramid, for napari)")
    p.add_argument("--outlines", choices=["none", "geojson"], default="none",
                   help="also write object outlines (geojson: outlines/<id>.geojson, for QuPath)")
    p.add_argument("--model", default=None, help="a .keras model with its spec beside it, or "
                   "their folder (a bundle; default: the bundled nuclei model)")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="images with more pixels fail (default: 256 million)")
    p.add_argument("--tiled-above", type=int, default=None,
                   help="TIFFs with more pixels are segmented block by block (default: 36 million)")
    p.add_argument("--block-size", type=int, default=None,
                   help="block edge for the block-wise path (multiple of 256; default 4096)")
    p.add_argument("--task-runner", choices=["threads", "dask"], default="threads",
                   help="threads in this process (default), or Dask (needs PREFECT_API_URL)")
    p.add_argument("--dask-address", default=None,
                   help="scheduler of an existing Dask cluster, e.g. tcp://host:8786 "
                        "(default with --task-runner dask: a new local cluster)")
    p.add_argument("--dask-workers", type=int, default=None,
                   help="worker processes of the new local Dask cluster (default: cores / 2)")
    p.add_argument("--retry-failed", action="store_true",
                   help="try again images that failed in an earlier run and did not change")
    p.add_argument("--trust-model", action="store_true",
                   help="load a model that carries Python code (e.g. a Lambda layer); only for "
                        "files you trust")
    p.add_argument("--fail-on-error", action="store_true",
                   help="exit with status 1 when any image failed")
    p.add_argument("--max-failure-fraction", type=float, default=None,
                   help="the run ends Failed (exit 1) when more than this share of images failed")
    p.add_argument("--channel", default=None,
                   help="channel to segment: an index (0, 1, ...) or a name from the file, e.g. "
                        "DAPI (needed for images with 2 or more than 3 channels)")
    p.add_argument("--plane", type=int, default=None,
                   help="plane of a 3-D stack or time series to segment (3-D/time are "
                        "otherwise failures)")
    p.add_argument("--pyramid-level", type=int, default=None,
                   help="resolution level of OME-Zarr / pyramidal TIFF inputs (default 0: full)")


#: Parameter fields whose option has another name.
_OPTION_OF = {"patterns": "pattern"}


def _segment_params(args, input_url):
    from pydantic import ValidationError

    from flows.params import SegmentParams

    fields = {"input": input_url, "output": args.output, "storage_options": args.storage_options,
              "shard_size": args.shard_size, "batch_size": args.batch_size,
              "cpu_workers": args.cpu_workers,
              "tta": args.tta, "tile_size": args.tile_size,
              "mask_format": args.mask_format, "model": args.model,
              "retry_failed": args.retry_failed, "trust_model": args.trust_model,
              "outlines": args.outlines}
    if args.patterns:
        fields["patterns"] = args.patterns
    if args.max_pixels is not None:
        fields["max_pixels"] = args.max_pixels
    if args.scale is not None:
        fields["scale"] = args.scale
    if args.max_failure_fraction is not None:
        fields["max_failure_fraction"] = args.max_failure_fraction
    for name in ("tiled_above", "block_size", "channel", "plane", "pyramid_level"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    try:
        return SegmentParams(**fields)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else ""
            name = "--" + _OPTION_OF.get(field, field).replace("_", "-") if field else "parameters"
            received = "" if name == "--storage-options" else f" (received: {err.get('input')!r})"
            lines.append(f"{name}: {err['msg']}{received}")  # options may hold credentials
        raise SystemExit("segflow: invalid parameters\n  " + "\n  ".join(lines)) from None


class _Progress:
    """A progress bar on a terminal, one line per shard otherwise."""

    def __init__(self, stream):
        self.stream, self.tty = stream, stream.isatty()
        self.bar = None

    def start(self, total, skipped):
        self.total, self.done, self.failed, self.t0 = total, 0, 0, time.perf_counter()
        print(f"{total} images to segment ({skipped} already done)", file=self.stream, flush=True)
        if self.tty and total:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
            )

            self.bar = Progress(TextColumn("segmenting"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[rate]} images/s"),
                                TextColumn("{task.fields[failed]} failed"), transient=False)
            self.task = self.bar.add_task("seg", total=total, rate="-", failed=0)
            self.bar.start()

    def update(self, result):
        self.done += result["images"] + result["failed"]
        self.failed += result["failed"]
        rate = self.done / max(time.perf_counter() - self.t0, 1e-9)
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done, rate=f"{rate:.2f}", failed=self.failed)
            if self.done >= self.total:
                self.bar.stop()
        else:
            print(f"shard {result['index']}: {self.done}/{self.total} images, "
                  f"{rate:.2f} images/s, {self.failed} failed", file=self.stream, flush=True)


def _run(args, input_url):
    # first thing, before Prefect and TensorFlow are imported: the two then overlap
    server = _flow_server() if args.task_runner == "threads" else None
    from flows.runners import api_url, check_api, make_task_runner

    params = _segment_params(args, input_url)
    from flows import progress
    from flows.segment import preflight, segment_images

    try:
        if server is None or server.process is None:  # a server of the user's: is it up?
            if api_url():
                check_api(api_url())
        runner = make_task_runner(args.task_runner, args.dask_address, args.dask_workers)
        # with threads the model warms up in its thread while the server starts
        preflight(params, warm_up=args.task_runner == "threads")
    except (ValueError, FileNotFoundError, PermissionError, TypeError, ConnectionError) as exc:
        raise SystemExit(f"segflow: {exc}") from None
    if args.task_runner != "threads":
        segment_images = segment_images.with_options(task_runner=runner)
    listener = _Progress(sys.stdout)
    progress.add_listener(listener)
    from prefect.exceptions import FailedRun

    from flows.report import TooManyFailures

    try:
        with _on(server) if server is not None else contextlib.nullcontext():
            summary = segment_images(params)
    except (FileNotFoundError, PermissionError) as exc:
        raise SystemExit(f"segflow: {type(exc).__name__}: {exc}") from None
    except FailedRun as exc:  # the flow ended Failed with a message (nothing to segment)
        raise SystemExit(f"segflow: {exc}") from None
    except TooManyFailures as exc:
        _print_summary(params, exc.summary)
        print(f"segflow: run failed: {exc}", file=sys.stderr)
        return 1
    finally:
        progress.remove_listener(listener)
    _print_summary(params, summary)
    return 1 if args.fail_on_error and summary["failed"] else 0


def _print_summary(params, summary):
    out = params.output.rstrip("/")
    line = f"{summary['images'] + summary['failed']} images, {summary['failed']} failed"
    if summary["failed"]:
        line += f": see {out}/failures"
    print(line)
    print(f"{summary['skipped']} already done, {summary['objects']} objects, "
          f"{summary['seconds']:.1f} s ({summary['images_per_second']:.2f} images/s)")
    extra = f", {out}/outlines" if params.outlines != "none" else ""
    print(f"outputs: {out}/labels{extra}, {out}/objects, {out}/images, {out}/failures, "
          f"{out}/run.json")


def _demo_table(output):
    import pandas as pd

    images = pd.read_parquet(f"{output}/images")
    cols = ["image_id", "height", "width", "n_objects", "mean_object_area", "nucleus_diameter",
            "scale"]
    print(images[cols].sort_values("image_id").to_string(
        index=False, na_rep="-", float_format=lambda v: f"{v:.2f}" if v < 10 else f"{v:.1f}"))


def _serve(args):
    from flows.serve import api_url, serve_segment

    if api_url() is None:
        from flows.serve import NO_SERVER

        print(f"segflow: {NO_SERVER}", file=sys.stderr)
        return 2
    _serve_checks(args)
    params = _segment_params(args, args.input)
    from flows.runners import check_api
    from flows.segment import preflight

    try:
        check_api(api_url())
        preflight(params)
    except (ValueError, FileNotFoundError, TypeError, ConnectionError) as exc:
        raise SystemExit(f"segflow: {exc}") from None
    serve_segment(params, name=args.name, cron=args.cron, interval=args.interval)
    return 0


def _serve_checks(args):
    """Options ``serve`` cannot honour are refused, not dropped: its runs are the server's."""
    if args.interval is not None and args.interval <= 0:
        raise SystemExit(f"segflow: --interval must be a positive number of seconds. "
                         f"Received: {args.interval}")
    if args.cron is not None:
        from prefect.client.schemas.schedules import CronSchedule
        from pydantic import ValidationError

        try:
            CronSchedule(cron=args.cron)
        except ValidationError:
            raise SystemExit(f"segflow: --cron must be a cron expression of 5 fields, e.g. "
                             f"\"0 * * * *\" (hourly). Received: {args.cron!r}") from None
    ignored = [name for name, given in [
        ("--task-runner", args.task_runner != "threads"), ("--dask-address", args.dask_address),
        ("--dask-workers", args.dask_workers is not None), ("--fail-on-error", args.fail_on_error)]
        if given]
    if ignored:
        raise SystemExit(f"segflow: segflow serve does not take {', '.join(ignored)}: its runs "
                         "execute in the serve process on threads, and their state is shown "
                         "by the server (use --max-failure-fraction to mark runs Failed).")
    if args.storage_options.strip() not in ("", "{}"):
        raise SystemExit(
            "segflow: segflow serve does not take --storage-options: a deployment's parameters "
            "are stored in the server's database, where segflow keeps storage options only as "
            "keys with '***' values (they may hold credentials). Give them to the served runs "
            "through the environment of segflow serve instead: fsspec's per-protocol defaults, "
            "e.g. FSSPEC_S3='{\"client_kwargs\": {\"endpoint_url\": \"http://minio:9000\"}}', "
            "and the storage's own variables or profiles (AWS_PROFILE, AWS_ACCESS_KEY_ID, "
            "GOOGLE_APPLICATION_CREDENTIALS).")


def _flow_server():
    """This process' early temporary server (see :mod:`flows.server`), started now: every
    command runs its flows on the same server, so runs and their records stay together."""
    from flows.server import early_server

    return early_server()


def _on(server):
    """The settings context of a flow run on ``server`` once it answers; exits with the
    server's own error where its process could not start (Prefect's fallback server would
    fail the same way)."""
    if not server.wait() and server.exited:
        raise SystemExit(f"segflow: {server.problem}")
    return server.settings()


def _train(args):
    from segmodel.training.train import parse_filters

    try:
        filters = list(parse_filters(args.filters))
    except ValueError as err:
        raise SystemExit(f"segflow: {err}") from None
    server = _flow_server()
    from pydantic import ValidationError

    from flows.params import TrainParams
    from flows.train import train_model

    try:
        params = TrainParams(out_dir=args.out_dir, data_dir=args.data_dir, steps=args.steps,
                             steps_per_epoch=args.steps_per_epoch,
                             learning_rate=args.learning_rate,
                             object_diameter=args.object_diameter, init=args.init,
                             seed=args.seed, images_dir=args.images, labels_dir=args.labels,
                             kind=args.kind, name=args.name,
                             filters=filters, bottleneck=args.bottleneck,
                             patch=args.patch, batch_size=args.batch_size,
                             contact_weight=args.contact_weight)
    except ValidationError as exc:
        raise SystemExit("segflow: invalid parameters\n  " + "\n  ".join(
            f"{err['loc'][0] if err['loc'] else 'parameters'}: {err['msg']}"
            for err in exc.errors())) from None
    if args.images:  # a missing or unpaired folder fails here, not inside the flow
        from segmodel.training.datasets import list_pairs

        try:
            list_pairs(args.images, args.labels or args.images)
        except (FileNotFoundError, ValueError) as exc:
            raise SystemExit(f"segflow: {exc}") from None
    with _on(server):
        path = train_model(params)
    print(f"trained model: {path}")
    return 0


def _evaluate(args):
    server = _flow_server()
    from pydantic import ValidationError

    from flows.evaluate import EvaluateParams, evaluate_labels, preflight

    try:
        params = EvaluateParams(pred=args.pred, truth=args.truth, groups_csv=args.groups,
                                group_column=args.group_column, out=args.out,
                                storage_options=json.loads(args.storage_options))
    except json.JSONDecodeError as exc:
        raise SystemExit(f"segflow: --storage-options must be JSON ({exc.msg}). "
                         f"Received: {args.storage_options!r}") from None
    except ValidationError:
        raise SystemExit("segflow: --storage-options must be a JSON object like "
                         '{"anon": true}.') from None
    try:
        preflight(params)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"segflow: {exc}") from None
    try:
        with _on(server):
            table = evaluate_labels(params)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"segflow: {exc}") from None
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


def _inspect(args):
    from segmodel.model.bundle import inspect

    lines, errors = inspect(args.bundle, trust=args.trust_model)
    for line in lines:
        print(line)
    for err in errors:
        print(f"segflow: error: {err}", file=sys.stderr)
    print(f"{len(errors)} problem(s) found" if errors else "ok: the spec fits the model")
    return 1 if errors else 0


def main(argv=None):
    args = _parser().parse_args(argv)
    if args.command == "run":
        return _run(args, args.input)
    if args.command == "demo":
        code = _run(args, str(SAMPLES))
        _demo_table(args.output)
        return code
    if args.command == "serve":
        return _serve(args)
    if args.command == "evaluate":
        return _evaluate(args)
    if args.command == "train":
        return _train(args)
    if args.command == "model":
        return _inspect(args)
    return 2


def console(entry=None):
    """The ``segflow`` console script: :func:`main` (or ``entry``), then a quick exit.

    Once :func:`main` has returned (or exited with a status), every output is written and
    closed, and Prefect's exit handlers (log and event flushing, the temporary server's stop)
    and logging's run as usual; what is skipped is the interpreter's teardown of every module
    and object, which takes 1.5-2 s after a run (most of it TensorFlow's) and does nothing a
    finished run needs. An uncaught error (a traceback) or an interrupt exits the usual way.
    """
    status = {}
    atexit.register(_quick_exit, status)  # registered first, so it runs after every other
    try:
        status["code"] = (entry or main)()
    except SystemExit as exc:  # its message, if any, is printed before the exit handlers
        status["code"] = exc.code
        raise
    return status["code"]


def _quick_exit(status):
    if "code" not in status:
        return
    code = status["code"]
    code = 0 if code is None else code if isinstance(code, int) else 1
    if "logging" in sys.modules:  # its exit handler may have been registered before this one
        sys.modules["logging"].shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(console())
