"""One grammar for every command: the shared options exist with the same names, short flags, types and
metavars wherever a command loads a model, reads images, writes outputs or runs methods; ``-O``
method options, image arguments and ``--out`` behave the same everywhere."""
from __future__ import annotations

import json

import pytest
import typer
from PIL import Image

from cli_support import run_cli
from pyexplain.cli import _register_commands, app
from pyexplain.cli.images import expand_images, output_stems
from pyexplain.cli.options import parse_options
from pyexplain.errors import PyExplainError

_register_commands()
COMMANDS = typer.main.get_command(app).commands

LOADS_MODEL = {"explain", "explain-dataset", "compare", "evaluate", "fit-rules", "export"}
READS_IMAGES = {"explain", "explain-dataset", "compare", "evaluate", "fit-rules"}
WRITES_OUTPUTS = {"explain", "explain-dataset", "compare", "evaluate", "fit-rules", "export", "data"}
ONE_METHOD = {"explain", "explain-dataset", "export"}
SEVERAL_METHODS = {"compare", "evaluate"}
METHOD_OPTIONS = ONE_METHOD | SEVERAL_METHODS | {"fit-rules"}
TAKES_TARGET = {"explain", "explain-dataset", "compare"}
NEITHER = {"models", "methods", "info", "train"}

#: option → (its flags, the type of its value, its metavar)
MODEL_FLAGS = {
    "--model": (["--model", "-m"], "str", "NAME"),
    "--weights": (["--weights"], "Path", "PATH"),
    "--random-weights": (["--random-weights"], "bool", None),
    "--input-size": (["--input-size"], "int", "INT"),
    "--mean": (["--mean"], "str", "FLOATS"),
    "--std": (["--std"], "str", "FLOATS"),
    "--labels": (["--labels"], "Path", "PATH"),
    "--device": (["--device"], "str", "DEVICE"),
    "--seed": (["--seed"], "int", "INT"),
}
IMAGE_FLAGS = {"--batch-size": (["--batch-size"], "int", "INT")}
OUTPUT_FLAGS = {"--out": (["--out", "-o"], "Path", "PATH")}
ONE_METHOD_FLAGS = {"--method": (["--method", "-M"], "str", "NAME")}
SEVERAL_METHODS_FLAGS = {"--methods": (["--methods", "-M"], "str", "LIST")}
OPTION_FLAGS = {"--option": (["--option", "-O"], "list[str]", "KEY=VALUE")}
TARGET_FLAGS = {"--target": (["--target", "-t"], "str", "CLASS")}

TABLE = [
    (LOADS_MODEL, MODEL_FLAGS), (READS_IMAGES, IMAGE_FLAGS), (WRITES_OUTPUTS, OUTPUT_FLAGS),
    (ONE_METHOD, ONE_METHOD_FLAGS), (SEVERAL_METHODS, SEVERAL_METHODS_FLAGS), (METHOD_OPTIONS, OPTION_FLAGS),
    (TAKES_TARGET, TARGET_FLAGS),
]


def visible_options(command: str) -> dict[str, object]:
    return {p.opts[0]: p for p in COMMANDS[command].params
            if p.param_type_name == "option" and not p.hidden}


def value_type(param) -> str:
    annotation = param.type_descriptor.annotation
    return param._bare_type(annotation)


def test_every_command_is_classified_and_listed_in_order(capsys):
    assert set(COMMANDS) == LOADS_MODEL | WRITES_OUTPUTS | NEITHER
    code, out, _ = run_cli(["--help"], capsys)
    listed = [line.split()[0] for line in out.split("Commands:")[1].splitlines() if line.strip()]
    assert code == 0 and listed[:6] == ["explain", "explain-dataset", "compare", "evaluate", "fit-rules", "export"]
    assert listed[6:] == ["models", "methods", "info", "data", "train"]


@pytest.mark.parametrize("commands, flags", TABLE)
def test_shared_options_have_one_spelling(commands, flags):
    for command in sorted(commands):
        options = visible_options(command)
        for name, (opts, kind, metavar) in flags.items():
            assert name in options, f"{command} lacks {name}"
            param = options[name]
            assert param.opts == opts, (command, name, param.opts)
            assert value_type(param) == kind, (command, name, value_type(param))
            assert param.metavar == metavar, (command, name, param.metavar)


def test_image_commands_take_images_as_arguments():
    for command in sorted(READS_IMAGES):
        arguments = [p for p in COMMANDS[command].params if p.param_type_name == "argument"]
        assert len(arguments) == 1, command
        assert arguments[0].nargs == -1 or command == "explain-dataset", command  # explain-dataset: one SRC
    for command in sorted(NEITHER - {"train"}):
        assert not any(p.param_type_name == "argument" for p in COMMANDS[command].params)


def test_one_method_and_several_methods_are_not_mixed():
    for command in sorted(COMMANDS):
        options = visible_options(command)
        assert not ({"--method", "--methods"} <= set(options)), command
        if command not in ONE_METHOD:
            assert "--method" not in options, command
        if command not in SEVERAL_METHODS:
            assert "--methods" not in options, command


def test_help_has_metavars_and_no_markup(capsys):
    for command in sorted(COMMANDS):
        code, out, _ = run_cli([command, "--help"], capsys)
        assert code == 0
        for raw in ("``", ":func:", ":class:", "TEXT", "INTEGER"):
            assert raw not in out, (command, raw)


def test_method_options_one_and_several_methods():
    assert parse_options(["interpolation=nearest", "layer=features.3"], ["gradcam"]) == {
        "gradcam": {"interpolation": "nearest", "layer": "features.3"}}
    assert parse_options(["gradcam.layer=features.3"], ["gradcam"]) == {"gradcam": {"layer": "features.3"}}
    assert parse_options(["gradcam.layer=x", "saliency.absolute=False"], ["gradcam", "saliency"]) == {
        "gradcam": {"layer": "x"}, "saliency": {"absolute": False}}
    assert parse_options([], ["gradcam", "saliency"]) == {}
    for pairs, methods, message in [
        (["layer=x"], ["gradcam", "saliency"], "write METHOD.KEY=VALUE"),
        (["steps=3"], ["gradcam"], "has no option 'steps'"),
        (["integrated_gradients.steps=abc"], ["integrated_gradients"], "steps"),
        (["saliency.absolute=False"], ["gradcam"], "which is not chosen"),
        (["steps"], ["gradcam"], "is not KEY=VALUE"),
    ]:
        with pytest.raises(PyExplainError, match=message):
            parse_options(pairs, methods)


def test_images_expand_folders_and_list_files(tmp_path):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for name in ("b.png", "sub/a.jpg"):
        Image.new("RGB", (8, 8)).save(folder / name)
    (folder / "notes.md").write_text("not an image")
    listing = tmp_path / "list.txt"
    listing.write_text("# two photos\nphotos/b.png\n\nphotos/sub/a.jpg\n")
    assert expand_images([str(folder)]) == [str(folder / "b.png"), str(folder / "sub" / "a.jpg")]
    assert expand_images([str(listing), "builtin:chelsea"]) == [
        str(folder / "b.png"), str(folder / "sub" / "a.jpg"), "builtin:chelsea"]
    with pytest.raises(PyExplainError, match="no such image file, folder or list file"):
        expand_images([str(tmp_path / "missing.png")])
    assert output_stems(["a/x.png", "b/x.png", "builtin:chelsea", "test:3"], "compare") == [
        "x_compare", "x_compare_2", "chelsea_compare", "test_3_compare"]


TINY = ["--model", "lpr_models:tiny", "--input-size", "16", "--device", "cpu"]


def test_unknown_class_names_suggest_the_closest_in_every_command(tmp_path, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_text("tabby cat\ntiger cat\ngolden retriever\nfire truck\nsailboat\n")
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (16, 16), (200, 120, 40)).save(folder / "a.png")
    common = [*TINY, "--labels", labels, "--target", "taby cat"]
    runs = {
        "explain": ["explain", folder / "a.png", "--out", tmp_path / "e", *common],
        "compare": ["compare", folder / "a.png", "--out", tmp_path / "c.png", *common],
        "explain-dataset": ["explain-dataset", folder, "--out", tmp_path / "d", "--no-progress", *common],
    }
    assert set(runs) == TAKES_TARGET
    for command, argv in runs.items():
        code, _, err = run_cli(argv, capsys)
        assert code == 2 and err.count("\n") == 1 and "did you mean 'tabby cat'" in err, (command, err)
    code, _, err = run_cli(["explain", folder / "a.png", "--out", tmp_path / "e", *TINY, "--method", "saliencyy"], capsys)
    assert code == 2 and "did you mean saliency" in err


def test_compare_runs_the_cheap_methods_by_default_and_writes_a_folder(tmp_path, capsys):
    from pyexplain.registry import describe_methods

    cheap = [e.name for e in describe_methods() if e.fixed_cost]
    assert "gradxinput" in cheap and not {"lpr", "dmbp", "rise", "occlusion", "integrated_gradients"} & set(cheap)
    Image.new("RGB", (16, 16), (10, 200, 40)).save(tmp_path / "green.png")
    out = tmp_path / "figures"
    code, stdout, err = run_cli(["compare", tmp_path / "green.png", "builtin:coffee", "--out", out, *TINY,
                                 "-O", "gradcam.interpolation=nearest"], capsys)
    assert code == 0, err
    assert "--methods all" in err and all(name in err for name in cheap)
    assert sorted(p.name for p in out.iterdir()) == ["coffee_compare.png", "green_compare.png"]
    assert Image.open(out / "coffee_compare.png").size[0] > 0
    code, _, err = run_cli(["compare", tmp_path / "green.png", "builtin:coffee", "--out", tmp_path / "one.png", *TINY,
                            "--methods", "saliency"], capsys)
    assert code == 2 and "give a folder" in err and not (tmp_path / "one.png").exists()


def test_fit_rules_takes_lpr_options_by_O_and_out_folder(tmp_path, capsys):
    code, _, err = run_cli(["fit-rules", "builtin:chelsea", "--out", tmp_path, "--iterations", "1", *TINY,
                            "-O", "gamma=5", "-O", "lpr.mask=sigmoid"], capsys)
    assert code == 0 and (tmp_path / "lpr_rules.pt").is_file(), err
    code, _, err = run_cli(["fit-rules", "builtin:chelsea", "--out", tmp_path / "r.pt", *TINY, "-O", "steps=3"], capsys)
    assert code == 2 and "fit-rules has no option 'steps'" in err


def test_explain_reads_a_folder_and_writes_json(tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    for name, colour in (("red", (220, 10, 10)), ("blue", (10, 10, 220))):
        Image.new("RGB", (16, 16), colour).save(folder / f"{name}.png")
    code, stdout, err = run_cli(["explain", folder, "--out", tmp_path / "out", "--json", "-M", "saliency",
                                 "-O", "saliency.absolute=False", *TINY], capsys)
    assert code == 0, err
    records = json.loads(stdout)
    assert [r["image"] for r in records] == [str(folder / "blue.png"), str(folder / "red.png")]
    assert (tmp_path / "out" / "red_saliency.npy").is_file()


def test_evaluate_counts_images_on_a_terminal_only(tmp_path, capsys, monkeypatch):
    import sys

    argv = ["evaluate", "builtin", "--model", "digits_cnn", "-M", "gradxinput", "--limit", "5", "--metrics", "morf",
            "--out", tmp_path]
    code, _, err = run_cli(argv, capsys)  # captured stderr is not a terminal
    assert code == 0 and "5/5" not in err
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    code, _, err = run_cli(argv, capsys)
    assert code == 0 and "5/5" in err and "img" in err  # counts images (one method here), not methods
    code, _, err = run_cli(argv + ["--quiet"], capsys)
    assert code == 0 and "5/5" not in err


def test_evaluate_takes_image_files_and_export_takes_an_out_folder(tmp_path, capsys):
    for name, colour in (("red", (220, 10, 10)), ("blue", (10, 10, 220))):
        Image.new("RGB", (16, 16), colour).save(tmp_path / f"{name}.png")
    code, stdout, err = run_cli(["evaluate", tmp_path / "red.png", tmp_path / "blue.png", *TINY, "-M", "saliency",
                                 "-O", "absolute=False", "--metrics", "morf", "--out", tmp_path / "eval"], capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["images"] == ["red", "blue"] and summary["options"] == {"saliency": {"absolute": False}}
    code, stdout, err = run_cli(["export", *TINY, "-M", "saliency", "--format", "onnx", "--out", tmp_path / "exports"],
                                capsys)
    assert code == 0, err
    assert [p.name for p in (tmp_path / "exports").iterdir()] == ["lpr_models_tiny_saliency.onnx"]
