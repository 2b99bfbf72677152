"""Every numeric option of every command refuses NaN, inf and -1 with one line and exit code 2, before
any work (nothing is written, no model is loaded); a config file's value is checked the same way."""

from __future__ import annotations

import click
import pytest

from scircuits.cli import cli, main

# the arguments each command needs besides the option under test (paths that do not exist: the
# options must be refused before any of them is looked at)
REQUIRED: dict[str, list[str]] = {
    "inspect": ["no-store"],
    "train": ["--store", "no-store"],
    "ablate": ["--sae", "no-sae"],
    "compare": ["no-run-a", "no-run-b"],
    "dashboard": ["no-run"],
    "synth train": ["--task", "addition"],
    "synth rotate": ["no-model", "--out", "no-out"],
}
BAD_VALUES = ("nan", "inf", "-inf", "-1")


def numeric_options() -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []

    def walk(command: click.Command, path: list[str]) -> None:
        if isinstance(command, click.Group):
            ctx = click.Context(command)
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                if sub is not None:
                    walk(sub, [*path, name])
            return
        for param in command.params:
            if isinstance(param, click.Option) and isinstance(
                param.type, (click.types.IntParamType, click.types.FloatParamType)
            ):
                found.append((" ".join(path), param.opts[0]))

    walk(cli, [])
    return found


OPTIONS = numeric_options()


def test_the_sweep_covers_every_command_with_numbers():
    commands = {command for command, _ in OPTIONS}
    assert {"collect", "train", "ablate", "run", "compare", "synth train", "validate sae"} <= commands
    assert len(OPTIONS) > 80


@pytest.mark.parametrize("command,option", OPTIONS, ids=[f"{c}:{o}" for c, o in OPTIONS])
def test_a_bad_number_is_one_line_and_exit_2_before_any_work(command, option, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SCIRCUITS_CACHE", str(tmp_path / "cache"))
    for value in BAD_VALUES:
        args = [*command.split(), *REQUIRED.get(command, []), f"{option}={value}"]
        with pytest.raises(SystemExit) as exc:
            main(args)
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2, f"{args}: exit {exc.value.code}, {err}"
        assert len(err.splitlines()) == 1 and err.startswith("Error:"), f"{args}: {err}"
        assert "Traceback" not in err
        # the refusal names the option (not a later failure, such as the missing store)
        assert option in err or option[2:].replace("-", "_") in err, f"{args}: {err}"
        assert list(tmp_path.iterdir()) == [], f"{args} wrote {list(tmp_path.iterdir())}"


@pytest.mark.parametrize(
    "text,needle",
    [
        ("[train]\ngrad_clip = nan\n", "grad_clip"),
        ("[train]\nlr = inf\n", "lr"),
        ("[train]\nseed = -1\n", "seed"),
        ("[train]\nexpansion = 1000000\n", "expansion"),
    ],
)
def test_a_config_files_bad_number_is_refused_the_same_way(text, needle, tmp_path, capsys):
    config = tmp_path / "train.toml"
    config.write_text(text)
    with pytest.raises(SystemExit) as exc:
        main(["train", "--config", str(config), "--store", str(tmp_path / "no-store")])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and needle in err


def test_plugin_options_refuse_non_finite_numbers(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--store", "no-store", "--sae", "relu", "--l1", "nan"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "l1 must be a finite number" in err
