"""Every setting defined once: each command's flags are the fields of one frozen dataclass (RunConfig,
DetectSettings, ValSettings, ExportSettings), whose defaults and help the parser takes; the flags the commands
share mean the same in each; no default depends on where the toolkit is installed."""

import dataclasses
from pathlib import Path

import pytest

import detect
import export
import train
import val
from helpers.paths import REPO
from segtoolkit.models.factory import model_meta
from segtoolkit.training.config import STORED_BEFORE, RunConfig

# each command: its parser, its settings, and the values its required flags get here
COMMANDS = {
    "train.py": (train.build_parser, RunConfig, {}),
    "detect.py": (detect.build_parser, detect.DetectSettings, {"model": "m.pth.tar", "source": "imgs"}),
    "val.py": (val.build_parser, val.ValSettings, {"model": "m.pth.tar"}),
    "export.py": (export.build_parser, export.ExportSettings, {"model": Path("m.pth.tar")}),
}
SHARED = ("--device", "--half", "--project", "--name", "--tile", "--tile-overlap", "--tile-weighting", "--tile-batch")


def actions(command):
    """{flag: argparse action} of a command's parser."""
    parser = COMMANDS[command][0]()
    return {option: action for action in parser._actions for option in action.option_strings}


def required_argv(required):
    return [word for key, value in required.items() for word in (f"--{key.replace('_', '-')}", str(value))]


@pytest.mark.parametrize("command", COMMANDS)
def test_the_parser_without_flags_is_the_settings_defaults_field_by_field(command):
    build, settings_class, required = COMMANDS[command]
    parsed = vars(build().parse_args(required_argv(required)))
    for field in dataclasses.fields(settings_class):
        expected = required[field.name] if field.default is dataclasses.MISSING else field.default
        assert field.name in parsed, f"{command}: {field.name} is a setting without a flag"
        assert parsed[field.name] == expected and type(parsed[field.name]) is type(expected), (command, field.name)
    names = {field.name for field in dataclasses.fields(settings_class)}
    assert set(parsed) - names == ({"no_augment"} if command == "train.py" else set())  # --no-augment: --augment none


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_has_its_help_and_required_flags_are_the_fields_without_default(command):
    build, settings_class, required = COMMANDS[command]
    by_dest = {action.dest: action for action in build()._actions if action.option_strings}
    for field in dataclasses.fields(settings_class):
        action = by_dest[field.name]
        assert action.help and action.help == field.metadata["help"], (command, field.name)
        assert action.required == (field.name in required), (command, field.name)


def test_shared_flags_have_the_same_name_help_and_meaning_in_every_command():
    parsers = {command: actions(command) for command in COMMANDS}
    having = {flag: [command for command in COMMANDS if flag in parsers[command]] for flag in SHARED}
    assert having["--device"] == ["train.py", "detect.py", "val.py"]
    assert having["--half"] == having["--tile"] == ["detect.py", "val.py"]
    assert having["--project"] == having["--name"] == ["train.py", "detect.py", "val.py"]
    for flag in ("--tile-overlap", "--tile-weighting", "--tile-batch"):
        assert having[flag] == ["train.py", "detect.py", "val.py"], flag  # val.py reproduces detect.py's tiles
    for flag, commands in having.items():
        first = parsers[commands[0]][flag]
        for command in commands[1:]:
            action = parsers[command][flag]
            assert (action.dest, action.choices, action.nargs) == (first.dest, first.choices, first.nargs), flag
            # --project: a str in RunConfig (a checkpoint stores it), a Path in detect.py's and val.py's settings
            assert action.type == first.type or flag == "--project", (flag, command)
        # detect.py and val.py: the same default and help; train.py's tile defaults are the run's own values,
        # which detect.py's and val.py's None stand for, and its --project is checkpoints/, theirs runs/
        assert parsers["detect.py"][flag].help == parsers["val.py"][flag].help, flag
        assert parsers["detect.py"][flag].default == parsers["val.py"][flag].default or flag == "--project", flag
        if "train.py" in commands:
            assert parsers["detect.py"][flag].help.startswith(parsers["train.py"][flag].help), flag
    for flag, field in (("--tile-overlap", "tile_overlap"), ("--tile-weighting", "tile_weighting"),
                        ("--tile-batch", "tile_batch")):
        assert parsers["detect.py"][flag].default is None
        assert parsers["train.py"][flag].default == getattr(RunConfig(), field)


def test_no_default_points_into_the_checkout():
    """After a non-editable install the checkout is not there: run folders and the sample are in the working
    folder, as YOLO's runs/ are."""
    for command in COMMANDS:
        for flag, action in actions(command).items():
            assert str(REPO) not in str(action.default), (command, flag)
            if isinstance(action.default, (str, Path)) and flag in ("--project", "--data-dir"):
                assert not Path(action.default).is_absolute(), (command, flag)
    assert actions("train.py")["--project"].default == "checkpoints"
    assert actions("detect.py")["--project"].default == Path("runs/detect")
    assert actions("val.py")["--project"].default == Path("runs/val")


def test_without_data_dir_outside_the_repository_the_error_says_what_to_give(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = train.main(train.parse_args(["--encoder", "resnet18", "--encoder-weights", "none", "--wandb-mode",
                                        "disabled"]))
    err = capsys.readouterr().err
    assert code == 2
    assert err == (f"error: no --data-dir given, and the bundled sample (data/sample) is not in {tmp_path}: give "
                   f"--data-dir DIR (a folder holding imgs/ and masks/), or run from the repository's folder\n")
    assert not (tmp_path / "checkpoints").exists()


def test_a_configuration_stored_before_a_setting_existed_reads_as_it_was_trained():
    stored = RunConfig.from_dict({"epochs": 3})
    assert (stored.resize, stored.crops_per_image) == (STORED_BEFORE["resize"], STORED_BEFORE["crops_per_image"])
    assert stored.tile_weighting == "gaussian"  # what every run evaluated with before --tile-weighting
    assert (RunConfig().resize, RunConfig().crops_per_image) == (None, None)  # the command line's: decided later
    # augmentation: upright before --augment none became the default; --no-augment before --augment existed
    assert (stored.augment, RunConfig().augment) == ("upright", "none")
    assert RunConfig.from_dict({"epochs": 3, "no_augment": True}).augment == "none"
    assert RunConfig.from_dict({"epochs": 3, "augment": "topdown"}).augment == "topdown"


def test_val_tile_flags_default_to_the_models_run_and_take_detects_values_when_given():
    meta = model_meta("Unet", "resnet18", 1, 64, input_mode="tile")
    run = RunConfig(tile_overlap=0.5, tile_batch=2, tile_weighting="linear", batch_size=3)
    checkpoint = {"config": run.to_dict()}
    resolved = val.resolve(val.ValSettings(model="m.pth.tar"), meta, checkpoint)
    assert (resolved.tile, resolved.tile_overlap, resolved.tile_batch, resolved.tile_weighting) == \
        (True, 0.5, 2, "linear")
    given = val.ValSettings(model="m.pth.tar", tile_overlap=0.25, tile_batch=4, tile_weighting="gaussian")
    resolved = val.resolve(given, meta, checkpoint)
    assert (resolved.tile_overlap, resolved.tile_batch, resolved.tile_weighting) == (0.25, 4, "gaussian")
    exported = val.resolve(val.ValSettings(model="m.onnx"), meta, None)  # an export stores no run: train.py's
    defaults = RunConfig()
    assert (exported.tile_overlap, exported.tile_batch, exported.tile_weighting) == \
        (defaults.tile_overlap, defaults.tile_batch, defaults.tile_weighting)
    assert run.tile_settings() == (0.5, 2, "linear") and run.tile_settings(0.1, 8, "gaussian") == (0.1, 8, "gaussian")


@pytest.mark.parametrize("command, argv, message", [
    (detect, ["--model", "m.pth.tar", "--source", "x", "--tile-batch", "0"],
     "error: --tile-batch 0 must be at least 1"),
    (val, ["--model", "m.pth.tar", "--tile-overlap", "0.9"], "error: --tile-overlap 0.9 puts each pixel inside about"),
    (train, ["--tile-overlap", "1.5"], "error: --tile-overlap 1.5 must be a fraction in [0, 0.875]"),
])
def test_tile_flags_are_checked_the_same_way_before_anything_loads(command, argv, message, capsys, tmp_path,
                                                                    monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing is created: no run folder either
    assert command.main(command.parse_args(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("argv, stored, expected", [([], None, None), (["--use-amp"], None, "on"),
                                                    (["--use-amp", "off"], None, "off"),
                                                    (["--use-amp", "auto"], None, "auto"),
                                                    (None, True, "on"), (None, False, "off")])
def test_use_amp_takes_auto_on_off_and_the_bare_switch_and_reads_old_runs_switch(argv, stored, expected):
    """--use-amp alone is on (what the switch was); a run stored with the switch (True/False) reads as on/off."""
    if argv is not None:
        config = RunConfig.from_namespace(train.parse_args(argv))
        assert config.use_amp == (expected or RunConfig().use_amp)
    else:
        assert RunConfig.from_dict({"use_amp": stored}).use_amp == expected


@pytest.mark.parametrize("mode, device, native, expected", [
    ("auto", "cpu", ["AVX-512 BF16"], "bfloat16 (auto)"), ("auto", "cpu", [], "off (auto: the CPU has no native "
                                                                               "bfloat16)"),
    ("on", "cpu", [], "bfloat16"), ("off", "cpu", ["AMX"], "off"), (True, "cpu", [], "bfloat16"),
    (False, "cpu", ["AMX"], "off")])
def test_amp_auto_is_bfloat16_only_on_cpus_with_native_bfloat16(mode, device, native, expected, monkeypatch):
    """auto: bfloat16 autocast where the CPU has it natively (fast), float32 where it would only be emulated (slow);
    on: asked for, so on anyway; the gradient scaler is never enabled on the CPU."""
    import torch

    from segtoolkit.training import precision
    monkeypatch.setattr(precision, "native_bfloat16", lambda: native)
    autocast, scaler, described = precision.resolve_precision(torch.device(device), mode)
    assert described == expected and not scaler.is_enabled()
    with autocast():
        product = torch.ones(4, 4) @ torch.ones(4, 4)
    assert product.dtype == (torch.bfloat16 if expected.startswith("bfloat16") else torch.float32)
