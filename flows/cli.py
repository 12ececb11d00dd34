"""The ``segflow`` command: a thin layer that builds flow parameters and calls the flows.

The options of ``run``, ``serve``, ``demo``, ``train``, ``evaluate`` and ``model export`` are
generated from the flows' parameter models (:class:`~flows.params.SegmentParams`,
:class:`~flows.params.TrainParams`, :class:`~flows.evaluate.EvaluateParams`) and the engine's
:class:`~segmodel.model.zoo_export.ExportOptions`: one option per field, its help the field's
description and default (a field marked ``json_schema_extra={"cli": False}``, a setting of a
recipe, has none). Values stay text and pydantic converts and validates them; an option not given is
not passed, so the model's default applies. Only the options that are not flow parameters (the
task runner, serve's schedule, ...) are declared here.
"""

import argparse
import atexit
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
import types
import typing
from pathlib import Path

SAMPLES = Path(__file__).resolve().parents[1] / "segmodel" / "samples"

# The CLI prints its own progress; Prefect's INFO lines still reach the API (and the UI).
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")

#: Options named otherwise than ``--field-name`` (spellings users rely on).
OPTION_NAMES = {"patterns": "--pattern", "images_dir": "--images", "labels_dir": "--labels",
                "groups_csv": "--groups"}

#: Fields whose values are never echoed in an error: they may hold credentials.
SECRET_FIELDS = {"storage_options"}


def option_name(field):
    """The command-line option of a parameter field: ``shard_size`` -> ``--shard-size``."""
    return OPTION_NAMES.get(field, "--" + field.replace("_", "-"))


#: The help of ``--debug``, an option of ``segflow`` and of each of its commands.
DEBUG_HELP = ("Also print the traceback behind an error's one-line message (as does "
              "SEGFLOW_DEBUG=1 in the environment).")


class _Parser(argparse.ArgumentParser):
    """A parser whose every option has a sentence for its help, ``--debug`` included: given
    before the command (``segflow --debug run ...``) or after it (``segflow run ... --debug``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for action in self._actions:
            if isinstance(action, argparse._HelpAction):
                action.help = "Show this help message and exit."
        # a command's own default would overwrite a --debug given before the command
        self.add_argument("--debug", action="store_true", help=DEBUG_HELP,
                          default=False if kwargs.get("prog") == "segflow" else argparse.SUPPRESS)


class _Command(_Parser):
    """A subcommand's parser whose options are added when it is used (to parse or for its
    help): a parameter model imports pandas or Prefect, which the other commands do without."""

    def __init__(self, *args, options=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._options = options

    def _add_options(self):
        if self._options is not None:
            options, self._options = self._options, None
            options(self)

    def parse_known_args(self, args=None, namespace=None):
        self._add_options()
        return super().parse_known_args(args, namespace)

    def format_help(self):
        self._add_options()
        return super().format_help()


def _parser():
    p = _Parser(prog="segflow", description="Batch nuclei segmentation.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Command)
    sub.add_parser("run", help="Segment every image under INPUT into OUTPUT.",
                   options=_run_options)
    sub.add_parser("serve", help="Serve a deployment that segments new images of INPUT on a "
                                 "schedule (needs a Prefect server).", options=_serve_options)
    sub.add_parser("demo", help="Segment the sample images shipped with segflow.",
                   options=_demo_options)
    sub.add_parser("evaluate", help="Score predicted masks against ground-truth masks.",
                   options=_evaluate_options)
    sub.add_parser("train", help="Train the nuclei model (resumes an interrupted run).",
                   options=_train_options)
    sub.add_parser("report", help="Write OUTPUT/report.html again from the tables of OUTPUT "
                                  "(every run's images).", options=_report_options)
    model = sub.add_parser("model", help="Model bundles (a .keras file and its spec).")
    model_sub = model.add_subparsers(dest="model_command", required=True, parser_class=_Command)
    inspect = model_sub.add_parser("inspect", help="Print a bundle's spec and check it against "
                                                   "its model (exit 1 on any problem).")
    inspect.add_argument("bundle", help="A .keras file with its spec beside it, or their folder; "
                         "or a BioImage Model Zoo package (.zip or folder with rdf.yaml).")
    inspect.add_argument("--trust-model", action="store_true",
                         help="Load a model that carries Python code; only for files you trust.")
    model_sub.add_parser("export", help="Write a model as a BioImage Model Zoo package "
                                        "(bioimage.io), checked by its validator.",
                         options=_export_options)
    return p


def command_parser(*names):
    """The parser of a command (``"run"``, or ``"model", "inspect"``), its options added."""
    parser = _parser()
    for name in names:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    if isinstance(parser, _Command):
        parser._add_options()
    return parser


def _segment_model():
    from flows.params import SegmentParams

    return SegmentParams


def _run_options(p):
    add_positional(p, _segment_model(), "input")
    add_positional(p, _segment_model(), "output")
    add_model_options(p, _segment_model(), skip={"input", "output"})
    _add_execution_options(p)


def _serve_options(p):
    add_positional(p, _segment_model(), "input")
    add_positional(p, _segment_model(), "output")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--cron", default=None,
                      help='Cron schedule of the runs, e.g. "0 * * * *" (hourly).')
    when.add_argument("--interval", type=float, default=None, help="Seconds between runs.")
    p.add_argument("--name", default="scheduled",
                   help="Deployment name: segment-images/NAME. (default: scheduled)")
    add_model_options(p, _segment_model(), skip={"input", "output"})
    _add_execution_options(p)


def _demo_options(p):
    add_positional(p, _segment_model(), "output", default="segflow-demo")
    add_model_options(p, _segment_model(), skip={"input", "output"})
    _add_execution_options(p)


def _evaluate_options(p):
    from flows.evaluate import EvaluateParams

    add_positional(p, EvaluateParams, "pred")
    add_positional(p, EvaluateParams, "truth")
    add_model_options(p, EvaluateParams, skip={"pred", "truth"})


def _export_options(p):
    from segmodel.model.zoo_export import ExportOptions

    add_positional(p, ExportOptions, "model", default="default")
    add_positional(p, ExportOptions, "out")
    add_model_options(p, ExportOptions, skip={"model", "out"})


def _report_options(p):
    from segmodel.pipeline.options import ReportOptions

    add_positional(p, ReportOptions, "output")
    add_model_options(p, ReportOptions, skip={"output"})


def _train_options(p):
    from flows.params import TrainParams

    add_positional(p, TrainParams, "out_dir", default="train-runs/nuclei")
    add_model_options(p, TrainParams, skip={"out_dir"})


def _add_execution_options(p):
    """How a run executes: options of the command, not parameters of the flow."""
    p.add_argument("--task-runner", choices=["threads", "dask"], default="threads",
                   help="Where shards run: threads in this process, or a Dask cluster (needs "
                        "PREFECT_API_URL). (default: threads)")
    p.add_argument("--dask-address", default=None,
                   help="Scheduler of an existing Dask cluster, e.g. tcp://host:8786 (default "
                        "with --task-runner dask: a new local cluster).")
    p.add_argument("--dask-workers", type=int, default=None,
                   help="Worker processes of the new local Dask cluster (default: cores / 2).")
    p.add_argument("--fail-on-error", action="store_true",
                   help="Exit with status 1 when any image failed.")


def add_positional(parser, model, field, default=None):
    """``field`` of ``model`` as a positional argument (optional where ``default`` is given)."""
    info = model.model_fields[field]
    extra = {"nargs": "?", "default": default} if default is not None else {}
    parser.add_argument(field, help=_help(field, info, default), **extra)


def is_option(info):
    """Whether a field has an option: all have but those marked ``json_schema_extra={"cli":
    False}``."""
    extra = info.json_schema_extra
    return not (isinstance(extra, dict) and extra.get("cli") is False)


def add_model_options(parser, model, skip=()):
    """One option per field of ``model`` (but ``skip`` and those :func:`is_option` refuses):
    values are passed as text, and only where given (the model's defaults apply otherwise)."""
    for field, info in model.model_fields.items():
        if field not in skip and is_option(info):
            option = option_name(field)
            kind = {"metavar": option.lstrip("-").replace("-", "_").upper(),
                    **_option_kind(field, info)}
            if kind.get("action") in ("store_true", argparse.BooleanOptionalAction) or \
                    "choices" in kind:
                del kind["metavar"]
            parser.add_argument(option, dest=field, default=argparse.SUPPRESS,
                                help=_help(field, info), **kind)


def _option_kind(field, info):
    """argparse's ``action``, ``choices`` and ``metavar`` for a field's option."""
    annotation = _optional_of(info.annotation)
    if annotation is bool:
        return {"action": "store_true" if info.default is False
                else argparse.BooleanOptionalAction}
    if typing.get_origin(annotation) is typing.Literal:
        choices = typing.get_args(annotation)
        if all(isinstance(c, str) for c in choices):
            return {"choices": list(choices)}
    if field in COMMA_LISTS:
        return {"metavar": "A,B,..."}
    if typing.get_origin(annotation) is list:
        return {"action": "append"}
    if typing.get_origin(annotation) is dict or annotation is dict:
        return {"metavar": "JSON"}
    return {}


def _optional_of(annotation):
    """``X`` of ``Optional[X]``; any other annotation as it is."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]
    return annotation


def _help(field, info, default=None):
    """The field's description, its default appended ("(default: 32)"); a None default is not
    shown (the description says what not giving the option means)."""
    from pydantic_core import PydanticUndefined

    value = info.get_default(call_default_factory=True) if default is None else default
    notes = []
    if typing.get_origin(_optional_of(info.annotation)) is list and field not in COMMA_LISTS:
        notes.append("repeatable")
    shown = _shown_default(field, value)
    if shown is not None and value is not PydanticUndefined:
        notes.append(f"default: {shown}")
    text = info.description or ""
    if notes:
        text = f"{text} ({'; '.join(notes)})"
    return text.strip().replace("%", "%%")


def _shown_default(field, value):
    if value is None or value is False:  # None: not given; False: a flag's absence
        return None
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) if field in COMMA_LISTS else " ".join(map(str, value))
    if isinstance(value, dict):
        return json.dumps(value)
    if value == "":
        return "''"
    return str(value)


def _filters(text):
    from segmodel.training.train import parse_filters

    return list(parse_filters(text))


#: List fields given as one comma-separated value (``--filters 16,32,64``), not repeated, and
#: the function that splits it (a ValueError naming the option where the text is not a list).
COMMA_LISTS = {"filters": _filters}


def build_params(model, args, **fixed):
    """``model`` from the fields given on the command line in ``args`` (and ``fixed``): fields
    not given are left out, so the model's defaults apply. Exits with "segflow: invalid
    parameters" and one line per problem naming its option where a value is invalid."""
    from pydantic import ValidationError

    given = {field: getattr(args, field) for field in model.model_fields if hasattr(args, field)}
    given.update(fixed)
    problems, failed = [], set()
    for field in list(given):
        try:
            given[field] = _from_text(field, model.model_fields[field], given[field])
        except ValueError as exc:
            option, message = option_name(field), str(exc)
            problems.append(message if message.startswith(option) else f"{option}: {message}")
            del given[field]
            failed.add(field)
    try:
        return _checked(model(**given), problems)
    except ValidationError as exc:
        problems += [_problem(model, err) for err in exc.errors()
                     if not (err["loc"] and err["loc"][0] in failed)]
        _checked(None, problems)
        raise  # not reached: a ValidationError has at least one error


def _checked(params, problems):
    if problems:
        raise SystemExit("segflow: invalid parameters\n  " + "\n  ".join(problems)) from None
    return params


def _from_text(field, info, value):
    """An option's text as pydantic takes it: comma lists split and JSON objects decoded;
    numbers and words pydantic converts itself."""
    if not isinstance(value, str):
        return value
    if field in COMMA_LISTS:
        return COMMA_LISTS[field](value)
    annotation = _optional_of(info.annotation)
    if annotation is dict or typing.get_origin(annotation) is dict:
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as exc:  # the text is not repeated: it may hold credentials
            raise ValueError(f"{field} must be a JSON object: {exc.msg} at character "
                             f"{exc.pos} of {len(value)}.") from None
        if not isinstance(value, dict):
            raise ValueError(f"{option_name(field)} must be a JSON object like "
                             f'{{"anon": true}}. Received: a {type(value).__name__}')
    return value


def _problem(model, err):
    """One line of a validation error, naming the option (or the positional argument); values
    of :data:`SECRET_FIELDS` are never echoed, nor those of a rule across fields."""
    if not err["loc"]:
        return f"parameters: {err['msg']}"  # a rule across fields: its message names them
    field = str(err["loc"][0])
    info = model.model_fields.get(field)
    name = field.upper() if info is not None and info.is_required() else option_name(field)
    received = "" if field in SECRET_FIELDS else f" (received: {err.get('input')!r})"
    return f"{name}: {err['msg']}{received}"


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
    from flows.params import SegmentParams
    from flows.runners import api_url, check_api, make_task_runner

    params = build_params(SegmentParams, args, input=input_url)
    from flows import progress
    from flows.segment import preflight, segment_images

    try:
        if server is None or server.process is None:  # a server of the user's: is it up?
            if api_url():
                check_api(api_url())
        runner = make_task_runner(args.task_runner, args.dask_address, args.dask_workers)
        # with threads the model warms up in its thread while the server starts
        preflight(params, warm_up=args.task_runner == "threads")
        _import_soon("matplotlib.figure", "matplotlib.backends.backend_agg")  # the report's
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
        args.summary = exc.summary
        if args.command == "run":
            _print_report(exc.summary)
        return 1
    finally:
        progress.remove_listener(listener)
    _print_summary(params, summary)
    args.summary = summary
    if args.command == "run":  # demo prints its table first
        _print_report(summary)
    if summary["failed"] and not summary["images"]:  # nothing a script could go on with
        print(f"segflow: every image failed ({summary['failed']}): see "
              f"{params.output.rstrip('/')}/failures", file=sys.stderr)
        return 1
    return 1 if args.fail_on_error and summary["failed"] else 0


def _import_soon(*modules):
    """Import ``modules`` in a thread, while this one waits (the server's start, the run):
    the report at the end of a run then does not wait for matplotlib's imports (0.4-0.8 s)."""
    import importlib

    def load():
        for name in modules:
            importlib.import_module(name)

    threading.Thread(target=load, name="segflow-imports", daemon=True).start()


def _print_summary(params, summary):
    out = params.output.rstrip("/")
    line = f"{summary['images'] + summary['failed']} images, {summary['failed']} failed"
    if summary["failed"]:
        line += f": see {out}/failures"
    print(line)
    print(f"{summary['skipped']} already done, {summary['objects']} objects, "
          f"{summary['seconds']:.1f} s ({summary['images_per_second']:.2f} images/s)")
    extra = f", {out}/outlines" if params.outlines != "none" else ""
    print(f"outputs: {out}/labels{extra}, {out}/objects, {out}/intensities, {out}/images, "
          f"{out}/failures, {out}/run.json")


def _print_report(summary):
    """The run's last line: its report, where it wrote one (it segmented an image)."""
    if summary.get("report"):
        print(f"report: {summary['report']}")


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
    from flows.params import SegmentParams

    params = build_params(SegmentParams, args)
    from flows.runners import check_api
    from flows.segment import preflight

    try:
        check_api(api_url())
        preflight(params)
    except (ValueError, FileNotFoundError, PermissionError, TypeError, ConnectionError) as exc:
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
    if getattr(args, "storage_options", "").strip() not in ("", "{}"):
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
    server = _flow_server()
    from flows.params import TrainParams
    from flows.train import train_model

    params = build_params(TrainParams, args)
    if params.images_dir:  # a missing or unpaired folder fails here, not inside the flow
        from segmodel.training.datasets import list_pairs

        try:
            list_pairs(params.images_dir, params.labels_dir or params.images_dir)
        except (FileNotFoundError, ValueError) as exc:
            raise SystemExit(f"segflow: {exc}") from None
    with _on(server):
        path = train_model(params)
    print(f"trained model: {path}")
    return 0


def _evaluate(args):
    server = _flow_server()
    from flows.evaluate import EvaluateParams, evaluate_labels, preflight

    params = build_params(EvaluateParams, args)
    try:
        pairing = preflight(params)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"segflow: {exc}") from None
    _print_pairing(pairing)
    try:
        with _on(server):
            table = evaluate_labels(params)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"segflow: {exc}") from None
    print(table.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.3f}"))
    return 0


def _report(args):
    """``segflow report``: the page from the output's tables, without Prefect or the model."""
    from segmodel.pipeline.options import ReportOptions

    params = build_params(ReportOptions, args)
    from segmodel.pipeline.report import write_report
    from segmodel.storage.io import Store

    try:
        store = Store(params.output, params.storage_options)
        if not store.exists():
            raise FileNotFoundError(f"OUTPUT not found: {params.output!r}. Check the path or URL "
                                    "(and --storage-options).")
        if not any(store.exists(p) for p in ("images", "failures", "runs", "run.json")):
            raise FileNotFoundError(
                f"OUTPUT holds no segflow tables (images/, failures/, runs/). Received: "
                f"{params.output!r}. Give the OUTPUT folder or URL of a segflow run.")
        path, _ = write_report(store, storage_options=params.storage_options,
                               warn=lambda line: print(f"segflow: {line}", file=sys.stderr))
    except (ValueError, FileNotFoundError, PermissionError, ConnectionError) as exc:
        raise SystemExit(f"segflow: {exc}") from None
    print(f"report: {path}")
    return 0


def _print_pairing(pairing, shown=5):
    """What ``segflow evaluate`` matched: the counts, and the first names found on one side."""
    n = pairing.counts()
    print(f"{n['both']} images with a prediction and a label (scored), {n['pred_only']} with "
          f"only a prediction, {n['truth_only']} with only a label: the scores are over the "
          f"{n['both']} scored images")
    for what, refs in (("only a prediction", pairing.pred_only),
                       ("only a label", pairing.truth_only)):
        if refs:
            names = ", ".join(r.image_id for r in refs[:shown])
            more = f", ... ({len(refs)} in all)" if len(refs) > shown else ""
            print(f"{what}: {names}{more}")


def _inspect(args):
    from segmodel.model.bundle import inspect

    lines, errors = inspect(args.bundle, trust=args.trust_model)
    for line in lines:
        print(line)
    for err in errors:
        print(f"segflow: error: {err}", file=sys.stderr)
    print(f"{len(errors)} problem(s) found" if errors else "ok: the spec fits the model")
    return 1 if errors else 0


def _export(args):
    from segmodel.model.zoo_export import ExportOptions, export_package

    options = build_params(ExportOptions, args)
    try:
        done = export_package(options)
    except (OSError, ValueError) as exc:  # missing files, storage refusals, bundle errors
        raise SystemExit(f"segflow: {exc}") from None
    for note in done.notes:
        print(f"note: {note}")
    for warning in done.warnings:
        print(f"bioimageio.spec warning: {warning}")
    print(f"wrote {done.url}: a {options.format} model package of {done.size / 1e6:.1f} MB, "
          f"weights {', '.join(done.weights)}; it validates with no error")
    return 0


#: Commands whose flows run on this process' temporary server (without PREFECT_API_URL).
_ON_SERVER = {"run", "demo", "train", "evaluate"}


def _server_first(argv):
    """Starts this process' temporary server (:func:`_flow_server`) where the command will run
    its flow on it (not for help, nor for a run on Dask), before the command's parameter model
    is imported (pandas, Prefect: seconds on 2 cores): the two then overlap."""
    if not argv or argv[0] not in _ON_SERVER or {"-h", "--help"} & set(argv):
        return
    if "--task-runner=dask" in argv or ["--task-runner", "dask"] in map(list, zip(argv, argv[1:])):
        return
    _flow_server()


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    _server_first(argv)
    args = _parser().parse_args(argv)
    if args.command == "run":
        return _run(args, args.input)
    if args.command == "demo":
        code = _run(args, str(SAMPLES))
        _demo_table(args.output)
        _print_report(args.summary)
        return code
    if args.command == "serve":
        return _serve(args)
    if args.command == "evaluate":
        return _evaluate(args)
    if args.command == "train":
        return _train(args)
    if args.command == "report":
        return _report(args)
    if args.command == "model":
        return _inspect(args) if args.model_command == "inspect" else _export(args)
    return 2


def console(entry=None):
    """The ``segflow`` console script: :func:`main` (or ``entry``), then a quick exit.

    Once :func:`main` has returned (or exited with a status), every output is written and
    closed, and Prefect's exit handlers (log and event flushing, the temporary server's stop)
    and logging's run as usual; what is skipped is the interpreter's teardown of every module
    and object, which takes 1.5-2 s after a run (most of it TensorFlow's) and does nothing a
    finished run needs. Ctrl-C prints one line and exits 130 (after the shard in progress);
    an uncaught error (a traceback) exits the usual way.
    """
    status = {}
    atexit.register(_quick_exit, status)  # registered first, so it runs after every other
    debug = debug_wanted(sys.argv[1:])
    if not debug:
        _quiet_after_interrupt()
    try:
        status["code"] = (entry or main)()
    except SystemExit as exc:  # its message, if any, is printed before the exit handlers
        status["code"] = exc.code
        if debug and isinstance(exc.code, str):
            _print_traceback(exc)
        raise
    except KeyboardInterrupt as exc:  # Ctrl-C: one line, not a traceback
        if debug:
            _print_traceback(exc)
        print(f"\n{INTERRUPTED}", file=sys.stderr)
        status["code"] = 130
    return status["code"]


class _AfterInterrupt(logging.Filter):
    """Drops the run loggers' error records once Ctrl-C was pressed: Prefect's lines about the
    runs it interrupted ("Crash detected! ...", "Finished in state Crashed") repeat what
    segflow's one line says."""

    interrupted = False

    def filter(self, record):
        return not (self.interrupted and record.levelno >= logging.ERROR)


def _quiet_after_interrupt():
    """Ctrl-C (in the main thread) notes the interrupt for :class:`_AfterInterrupt`, then
    raises ``KeyboardInterrupt`` as Python's own handler does."""
    if threading.current_thread() is not threading.main_thread():
        return
    quiet = _AfterInterrupt()
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).addFilter(quiet)

    def interrupt(signum, frame):
        quiet.interrupted = True
        signal.default_int_handler(signum, frame)

    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, interrupt)


def debug_wanted(argv, environ=None):
    """Whether ``argv`` holds ``--debug`` (before a ``--``) or ``SEGFLOW_DEBUG`` is set to
    anything but ``""``, ``0``, ``false`` or ``no``."""
    value = (os.environ if environ is None else environ).get("SEGFLOW_DEBUG", "")
    argv = argv[:argv.index("--")] if "--" in argv else argv
    return "--debug" in argv or value.strip().lower() not in ("", "0", "false", "no")


def _print_traceback(exc):
    """``--debug``: the error behind a one-line message (the one it was raised from, where
    there is one), as Python prints an uncaught error."""
    behind = exc.__context__ if exc.__context__ is not None else exc
    traceback.print_exception(behind, file=sys.stderr)
    sys.stderr.flush()


#: What Ctrl-C prints: shards are committed whole, so a rerun goes on where this one stopped.
INTERRUPTED = ("segflow: interrupted; the run stopped. Run the same command again to go on: "
               "images already written are skipped.")


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
