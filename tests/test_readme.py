"""Every shell command and Python snippet in README.md runs as written, so that examples cannot rot.

Cheap substitutions only: random weights for models whose weights would be downloaded (the tests
never reach the internet), a few iterations/steps/samples, tiny images standing in for the user's
photos (``cat.jpg``, ``photos/``, ``list.txt``, ...). Commands run in README order in one working
folder, so a command may use what an earlier one wrote; the Python snippets run in one namespace,
as one session. A command that cannot run here is listed in :data:`NOT_RUN` with the reason, and a
README command that is neither run nor listed fails the test.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
import torch
from PIL import Image

from pyexplain import model_catalog, registry
from pyexplain.io import builtin_image
from tests.cli_support import exit_code, run_cli

README = Path(__file__).resolve().parents[1] / "README.md"
#: Option values small enough for a test (iterative methods, sampling methods, occlusion).
CHEAP = {"iterations": 2, "steps": 3, "samples": 3, "masks": 8, "window": 112, "stride": 112}
#: Commands that are not run here, by their first words, and why.
NOT_RUN = {
    "make": "set-up: CI runs `make test` itself, and `make demo` is `pyexplain explain builtin:chelsea --method lpr`",
    "torchrun": "several processes (and machines): tests/test_dataset.py runs explain-dataset under torchrun",
    "python -m torch.distributed.run": "several processes: tests/test_dataset.py runs explain-dataset under torchrun",
    "cmake": "the C++ consumer's build: tests/test_export_cpp.py builds and runs it",
    "build/cpp/explain": "the C++ consumer: tests/test_export_cpp.py builds and runs it",
}


@dataclass(frozen=True)
class Command:
    line: int
    text: str

    def __str__(self) -> str:
        return f"README.md:{self.line}: {self.text}"


def _blocks(language: str) -> list[tuple[int, str]]:
    text = README.read_text(encoding="utf-8")
    found = []
    for match in re.finditer(r"^( *)```(\w+)\n(.*?)^\1```", text, re.S | re.M):
        if match.group(2) == language:
            body = "\n".join(line[len(match.group(1)):] for line in match.group(3).splitlines())
            found.append((text[:match.start()].count("\n") + 2, body))
    return found


def shell_commands() -> list[Command]:
    """The README's shell commands, continuation lines joined, comments dropped."""
    commands = []
    for first_line, body in _blocks("bash"):
        pending, start = "", None
        for offset, raw in enumerate(body.splitlines()):
            start = first_line + offset if start is None else start
            if raw.rstrip().endswith("\\"):
                pending += raw.rstrip()[:-1] + " "
                continue
            words = shlex.split(pending + raw, comments=True)
            if words:
                commands.append(Command(start, shlex.join(words)))
            pending, start = "", None
    return commands


def _reason_not_run(command: Command) -> str | None:
    for prefix, why in NOT_RUN.items():
        if command.text == prefix or command.text.startswith(prefix + " "):
            return why
    if "--device cuda" in command.text and not torch.cuda.is_available():
        return "needs a CUDA GPU"
    return None


def cheap(text: str) -> str:
    """``KEY=N`` of :data:`CHEAP` keys set to their cheap values."""
    return re.sub(r"\b(%s)=\d+" % "|".join(CHEAP), lambda m: f"{m.group(1)}={CHEAP[m.group(1)]}", text)


def _downloads(model: str) -> bool:
    return model in model_catalog.TORCHVISION_MODELS or model.startswith("timm:")


def cli_arguments(words: list[str]) -> list[str]:
    """``pyexplain ARGS`` with random weights instead of downloaded weights or a weights file the
    README supposes the user has, and cheap option values."""
    args = [cheap(word) for word in words[1:]]
    if "--weights" in args:
        at = args.index("--weights")
        del args[at:at + 2]
        args.append("--random-weights")
    model = args[args.index("--model") + 1] if "--model" in args else None
    if model and _downloads(model) and "--random-weights" not in args:
        args.append("--random-weights")
    if words[1:2] == ["fit-rules"]:
        args += ["--iterations", "2"]
    if words[1:2] == ["evaluate"]:
        if "--limit" in args:
            at = args.index("--limit")
            del args[at:at + 2]
        args += ["--limit", "2"] + (["--roar-epochs", "1"] if "roar" in " ".join(args) else [])
    return args


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """The user's files the README speaks of, as tiny images."""
    folder = tmp_path_factory.mktemp("readme")
    photo = builtin_image("chelsea").convert("RGB").resize((90, 60))
    for name in ("cat.jpg", "img.png", "img.jpg", "a.jpg", "b.jpg", "c.jpg", "d.jpg"):
        photo.save(folder / name)
    (folder / "photos").mkdir()
    photo.save(folder / "photos" / "chelsea.jpg")
    builtin_image("coffee").convert("RGB").resize((90, 60)).save(folder / "photos" / "coffee.png")
    (folder / "list.txt").write_text("# the photos to explain\nphotos/chelsea.jpg\nphotos/coffee.png\n")
    assert exit_code(["fit-rules", folder / "a.jpg", "--iterations", "2", "--out", folder / "rules.pt"]) == 0
    return folder


@pytest.fixture(scope="module")
def cheap_methods():
    """Every method with the cheap values of :data:`CHEAP` as its defaults (the README's own values win)."""
    registry._load_all()
    saved = dict(registry._METHODS)
    for name, info in saved.items():
        small = {key: value for key, value in CHEAP.items() if key in info.defaults}
        if small:  # the function's own defaults, and the registry's copy (explain-dataset fills options in from it)
            registry._METHODS[name] = type(info)(**{**info.__dict__, "fn": partial(info.fn, **small),
                                                    "defaults": {**info.defaults, **small}})
    yield
    registry._METHODS.clear()
    registry._METHODS.update(saved)


def test_every_readme_command_is_run_or_excused():
    commands = shell_commands()
    assert len(commands) > 20
    for command in commands:
        first = shlex.split(command.text)
        runnable = first[0] == "pyexplain" or (first[0].count("=") == 1 and first[1:2] == ["pyexplain"])
        assert runnable or _reason_not_run(command), f"{command}: neither run by this test nor in NOT_RUN"


@pytest.mark.slow
def test_readme_shell_commands_run_as_written(workspace, cheap_methods, monkeypatch, capsys):
    monkeypatch.chdir(workspace)
    ran = 0
    for command in shell_commands():
        if _reason_not_run(command):
            continue
        words = shlex.split(command.text)
        while "=" in words[0]:  # VAR=value prefixes
            key, _, value = words.pop(0).partition("=")
            monkeypatch.setenv(key, value)
        code, _, err = run_cli(cli_arguments(words), capsys)
        assert code == 0, f"{command}: {err[-1000:]}"
        monkeypatch.delenv("PYEXPLAIN_BACKEND", raising=False)
        ran += 1
    assert ran >= 20


@pytest.mark.slow
def test_readme_python_snippets_run_as_written(workspace, cheap_methods, monkeypatch):
    monkeypatch.chdir(workspace)
    namespace: dict = {}
    for line, body in _blocks("python"):
        code = cheap(body)
        code = re.sub(r'load_model\("([\w:]+)"\)',
                      lambda m: f'load_model("{m.group(1)}", random_weights=True)' if _downloads(m.group(1)) else m.group(0),
                      code)
        exec(compile(code, f"README.md:{line}", "exec"), namespace)  # noqa: S102 - the project's own README
    assert Path("ggc.onnx").is_file() and Path("cat_gradxinput.png").is_file()
    assert isinstance(namespace["e"].extras["loss_history"], torch.Tensor)
    Image.open("cat_gradxinput.png").verify()
