"""``segflow``'s options generated from the flows' parameter models: one option per field,
described and defaulted by the model, and invalid values named by their option."""

import argparse
import ast
import re
from pathlib import Path

import pytest

from flows import cli
from flows.cli import build_params, command_parser, option_name
from flows.evaluate import EvaluateParams
from flows.params import SegmentParams, TrainParams
from segmodel.training.train import TrainConfig

#: command, its parameter model, and the fields that are positional arguments
COMMANDS = [("run", SegmentParams, {"input", "output"}),
            ("serve", SegmentParams, {"input", "output"}),
            ("demo", SegmentParams, {"output"}),
            ("train", TrainParams, {"out_dir"}),
            ("evaluate", EvaluateParams, {"pred", "truth"})]
#: fields no option sets (demo segments the shipped samples)
NOT_OPTIONS = {"demo": {"input"}}
POSITIONALS = {"run": ["in", "out"], "serve": ["in", "out"], "demo": [], "train": [],
               "evaluate": ["pred", "truth"]}


@pytest.mark.parametrize("command, model, positional", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_every_field_has_exactly_one_option_described_by_the_model(command, model, positional):
    actions = command_parser(command)._actions
    for field, info in model.model_fields.items():
        if field in NOT_OPTIONS.get(command, ()) or not cli.is_option(info):
            assert not [a for a in actions if a.dest == field]
            continue
        mine = [a for a in actions if a.dest == field]
        assert len(mine) == 1, (field, mine)
        action = mine[0]
        if field in positional:
            assert action.option_strings == []
        else:
            assert action.option_strings == [option_name(field)]
            assert action.default is argparse.SUPPRESS  # not given: the model's default
        assert info.description and info.description in action.help, field
    strings = [s for a in actions for s in a.option_strings]
    assert len(strings) == len(set(strings))


def test_renamed_options_keep_their_spellings():
    assert option_name("shard_size") == "--shard-size"
    assert option_name("patterns") == "--pattern"
    assert option_name("images_dir") == "--images" and option_name("labels_dir") == "--labels"
    assert option_name("groups_csv") == "--groups"


def _help_of(command, option):
    return next(a.help for a in command_parser(command)._actions
                if option in a.option_strings)


def test_help_shows_the_models_defaults():
    assert _help_of("run", "--shard-size").endswith("(default: 32)")
    assert _help_of("run", "--batch-size").endswith("(default: 8)")
    assert "(repeatable; default: *.png *.jpg" in _help_of("run", "--pattern")  # a factory's
    assert _help_of("run", "--mask-format").endswith("(default: tif)")
    assert "default: None" not in _help_of("run", "--tile-size")
    assert _help_of("run", "--max-failure-fraction").endswith("(default: 1.0)")
    assert _help_of("train", "--filters").endswith("(default: 16,32,64,128)")
    assert _help_of("train", "--steps").endswith("(default: 2600)")
    assert _help_of("evaluate", "--group-column").endswith("(default: modality)")
    run = command_parser("run")._actions
    assert next(a for a in run if a.dest == "mask_format").choices == ["tif", "png", "ome-zarr"]
    assert next(a for a in run if a.dest == "tta").const is True  # a store_true flag
    assert next(a for a in run if a.dest == "patterns").__class__.__name__ == "_AppendAction"


@pytest.mark.parametrize("command, model, positional", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_options_not_given_leave_the_models_defaults(command, model, positional):
    args = command_parser(command).parse_args(POSITIONALS[command])
    assert not [f for f in model.model_fields if f not in positional and hasattr(args, f)]
    fixed = {"input": "in"} if command == "demo" else {}
    params = build_params(model, args, **fixed)
    given = {f: getattr(args, f) for f in positional} | fixed
    assert params.model_dump() == model(**given).model_dump()
    if command == "train":
        assert params.out_dir == "train-runs/nuclei" and params.filters == (16, 32, 64, 128)
    if command == "run":
        assert params.shard_size == 32 and params.max_failure_fraction == 1.0


def test_given_options_reach_the_parameters():
    args = command_parser("run").parse_args([
        "in", "out", "--shard-size", "4", "--pattern", "*.png", "--pattern", "*.tif", "--tta",
        "--mask-format", "png", "--storage-options", '{"anon": true}', "--scale", "1",
        "--channel", "DAPI", "--plane", "2", "--max-failure-fraction", "0.5",
        "--task-runner", "dask"])
    params = build_params(SegmentParams, args)
    assert (params.shard_size, params.patterns, params.tta, params.mask_format) == \
        (4, ["*.png", "*.tif"], True, "png")
    assert params.storage_options == {"anon": True} and params.scale == 1.0
    assert (params.channel, params.plane, params.max_failure_fraction) == ("DAPI", 2, 0.5)
    assert params.batch_size == 8 and args.task_runner == "dask"
    train = build_params(TrainParams, command_parser("train").parse_args([
        "o", "--filters", "8,16", "--patch", "64", "--images", "im", "--labels", "lab",
        "--learning-rate", "1e-3", "--kind", "binary"]))
    assert (train.filters, train.patch, train.images_dir, train.labels_dir) == \
        ((8, 16), 64, "im", "lab")
    assert (train.learning_rate, train.kind, train.steps) == (1e-3, "binary", 2600)
    ev = build_params(EvaluateParams, command_parser("evaluate").parse_args([
        "p", "t", "--groups", "g.csv", "--storage-options", '{"anon": true}']))
    assert (ev.groups_csv, ev.storage_options, ev.group_column) == \
        ("g.csv", {"anon": True}, "modality")


@pytest.mark.parametrize("command, argv, line", [
    ("run", ["--shard-size", "0"], "--shard-size: Input should be greater than or equal to 1 "
                                   "(received: '0')"),
    ("run", ["--batch-size", "x"], "--batch-size: Input should be a valid integer"),
    ("run", ["--pattern", ""], "--pattern: Value error, patterns must be non-empty"),
    ("run", ["--block-size", "300"], "--block-size: Input should be a multiple of 256"),
    ("train", ["--bottleneck", "0"], "--bottleneck: Input should be greater than or equal to 1"),
    ("train", ["--filters", "16,x"], "--filters must be positive integers separated by commas"),
    ("train", ["--labels", "lab"], "--labels: Value error, labels_dir needs images_dir"),
    ("train", ["--filters", "16,32,64,128,256", "--patch", "48"],
     "parameters: Value error, --patch must be a multiple of 32 with 5 levels"),
    ("evaluate", ["--storage-options", "{bad"], "--storage-options: storage_options must be a "
                                                "JSON object: Expecting property name"),
    ("evaluate", ["--storage-options", "[1]"], "--storage-options must be a JSON object like "
                                               '{"anon": true}. Received: a list'),
], ids=["shard-size", "batch-size", "pattern", "block-size", "bottleneck", "filters", "labels",
        "patch", "evaluate-json", "evaluate-list"])
def test_a_bad_value_exits_with_one_line_naming_its_option(command, argv, line):
    model = {"run": SegmentParams, "train": TrainParams, "evaluate": EvaluateParams}[command]
    args = command_parser(command).parse_args(POSITIONALS[command] + argv)
    with pytest.raises(SystemExit) as err:
        build_params(model, args)
    first, *rest = str(err.value).split("\n")
    assert first == "segflow: invalid parameters"
    assert len(rest) == 1 and rest[0].startswith("  " + line), rest


@pytest.mark.parametrize("command, model", [("run", SegmentParams),
                                            ("evaluate", EvaluateParams)])
@pytest.mark.parametrize("text", ['{"key": "s3cr3t", ', '["s3cr3t"]', '"s3cr3t"'])
def test_storage_options_are_never_echoed(command, model, text):
    args = command_parser(command).parse_args(POSITIONALS[command] + ["--storage-options", text])
    with pytest.raises(SystemExit) as err:
        build_params(model, args)
    lines = str(err.value).split("\n")
    assert len(lines) == 2 and lines[1].startswith("  --storage-options")
    assert "s3cr3t" not in str(err.value)


def test_every_problem_gets_its_line():
    args = command_parser("run").parse_args(
        ["in", "out", "--shard-size", "0", "--tile-size", "x", "--storage-options", "{"])
    with pytest.raises(SystemExit) as err:
        build_params(SegmentParams, args)
    lines = str(err.value).split("\n")[1:]
    assert sorted(line.split(":")[0].strip() for line in lines) == \
        ["--shard-size", "--storage-options", "--tile-size"]


def test_segflow_run_exits_naming_the_option(monkeypatch, tmp_path):
    monkeypatch.setattr(cli, "_flow_server", lambda: None)  # no temporary server
    with pytest.raises(SystemExit) as err:
        cli.main(["run", str(tmp_path), str(tmp_path / "out"), "--shard-size", "0"])
    assert str(err.value) == ("segflow: invalid parameters\n  --shard-size: Input should be "
                              "greater than or equal to 1 (received: '0')")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, message", [
    (["--filters", "16,x"], "--filters must be positive integers"),
    (["--filters", "16,32,64,128,256", "--patch", "48"],
     "--patch must be a multiple of 32 with 5 levels"),
    (["--bottleneck", "0"], "--bottleneck: Input should be greater than or equal to 1")],
    ids=["filters", "patch", "bottleneck"])
def test_segflow_train_exits_naming_a_bad_architecture_option(monkeypatch, tmp_path, argv,
                                                              message):
    monkeypatch.setattr(cli, "_flow_server", lambda: None)  # no temporary server
    with pytest.raises(SystemExit) as err:
        cli.main(["train", str(tmp_path / "out"), *argv])
    assert str(err.value).startswith("segflow: invalid parameters\n")
    assert message in str(err.value)
    assert not (tmp_path / "out").exists()


def test_every_training_setting_users_set_is_a_segflow_train_option_with_its_default():
    """Each field of TrainConfig is an option of ``segflow train`` described by the field and
    defaulting to it, but the recipe's own settings (``json_schema_extra={"cli": False}``)."""
    actions = {a.dest: a for a in command_parser("train")._actions}
    params = build_params(TrainParams, command_parser("train").parse_args([]))
    defaults = TrainConfig()
    options = [f for f, info in TrainConfig.model_fields.items() if cli.is_option(info)]
    assert {"data_dir", "steps", "filters", "kind", "images_dir", "contact_weight"} <= \
        set(options)
    for field in options:
        info, action = TrainConfig.model_fields[field], actions[field]
        assert action.option_strings == [option_name(field)], field
        assert info.description and info.description in action.help, field
        assert getattr(params, field) == getattr(defaults, field), field
        shown = cli._shown_default(field, getattr(defaults, field))
        assert action.help.endswith(f"(default: {shown})" if shown else info.description), field
    internal = TrainConfig.model_fields.keys() - set(options)
    assert {"warmup_steps", "modality_weights", "contact_radius"} <= internal
    assert not internal & actions.keys()
    assert {f: getattr(params, f) for f in internal} == {f: getattr(defaults, f) for f in internal}


def test_the_training_options_table_lists_every_segflow_train_option():
    table = (Path(__file__).resolve().parents[2] / "docs" / "training.md").read_text()
    section = table.split("## Options", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(--[a-z-]+)|, `(--[a-z-]+)", section, re.MULTILINE))
    documented = {o for pair in documented for o in pair if o}
    generated = {option_name(f) for f, info in TrainParams.model_fields.items()
                 if cli.is_option(info) and f != "out_dir"}
    assert documented == generated


def test_an_unknown_choice_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as err:
        cli.main(["run", "in", "out", "--mask-format", "bmp"])
    assert err.value.code == 2
    assert "argument --mask-format: invalid choice: 'bmp'" in capsys.readouterr().err


@pytest.mark.parametrize("argv, starts", [
    (["run", "in", "out"], True), (["train"], True), (["evaluate", "p", "t"], True),
    (["run", "in", "out", "--help"], False), (["run", "in", "out", "--task-runner", "dask"], False),
    (["run", "in", "out", "--task-runner=dask"], False), (["serve", "in", "out"], False),
    (["model", "inspect", "b"], False), ([], False)])
def test_the_temporary_server_starts_first_only_for_flows_on_it(monkeypatch, argv, starts):
    calls = []
    monkeypatch.setattr(cli, "_flow_server", lambda: calls.append(1))
    cli._server_first(argv)
    assert calls == ([1] if starts else [])


def test_no_cli_function_is_over_60_lines_or_8_parameters():
    tree = ast.parse(Path(cli.__file__).read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            params = len(a.posonlyargs + a.args + a.kwonlyargs) + bool(a.vararg) + bool(a.kwarg)
            assert node.end_lineno - node.lineno + 1 <= 60, node.name
            assert params <= 8, node.name


def _parsers(parser, name="segflow"):
    """``(command line, parser)`` of ``segflow`` and of each command under it, options added."""
    if isinstance(parser, cli._Command):
        parser._add_options()
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {command}")


#: The rule of a help text: a sentence that starts with a capital letter or a quoted or
#: backticked name and ends with a period, before the notes ``_help`` appends
#: ("(default: 32)", "(repeatable; default: ...)").
SENTENCE = re.compile(r"^[A-Z'\"`].*\.$", re.DOTALL)
NOTES = re.compile(r" \((?:default: |repeatable)[^()]*\)$")


def test_every_option_and_command_of_segflow_has_a_sentence_for_help():
    parsers = dict(_parsers(cli._parser()))
    assert {"segflow run", "segflow serve", "segflow demo", "segflow evaluate", "segflow train",
            "segflow model", "segflow model inspect"} <= parsers.keys()
    bad = []
    for name, parser in parsers.items():
        for action in parser._actions:
            texts = [(c.dest, c.help) for c in getattr(action, "_choices_actions", [])] \
                if isinstance(action, argparse._SubParsersAction) else \
                [("/".join(action.option_strings) or action.dest, action.help)]
            bad += [(name, what, text) for what, text in texts
                    if not SENTENCE.match(NOTES.sub("", text or ""))]
        assert "--debug" in parser.format_help(), name
    assert bad == []


def test_debug_is_taken_before_or_after_the_command_or_from_the_environment():
    parse = cli._parser().parse_args
    assert parse(["--debug", "evaluate", "p", "t"]).debug is True
    assert parse(["evaluate", "p", "t", "--debug"]).debug is True
    assert parse(["model", "inspect", "b", "--debug"]).debug is True
    assert parse(["evaluate", "p", "t"]).debug is False
    assert cli.debug_wanted(["run", "a", "b", "--debug"], environ={})
    assert not cli.debug_wanted(["run", "a", "b"], environ={})
    assert not cli.debug_wanted(["run", "--", "--debug"], environ={})  # a path named --debug
    assert cli.debug_wanted(["run"], environ={"SEGFLOW_DEBUG": "1"})
    assert not any(cli.debug_wanted(["run"], environ={"SEGFLOW_DEBUG": v})
                   for v in ("", "0", "false", "no"))
