"""One spelling per idea across commands: the command list, layer ranges (one grammar,
``common.parse_layers``), progress and prompt-kind flags with their documented aliases, and
library messages that name parameters turned into the flags the user typed."""
from __future__ import annotations

import pytest

import cli
from common import parse_layers, suggest

#: the commands `spatialbind --help` listed before the restructuring (issue 9)
COMMANDS = ["ablate", "amplify", "demo", "evaluate", "extract", "generate", "model", "organism",
            "patch", "probe", "query", "show"]


def test_help_lists_the_same_commands():
    assert cli.spatialbind.list_commands(None) == COMMANDS
    for name in COMMANDS:  # every registered target imports and is a click command
        assert cli.spatialbind.get_command(None, name).name == name


@pytest.mark.parametrize("spec, want", [
    ("0-3", (0, 1, 2, 3)), ("0:3", (0, 1, 2, 3)), ("0:12:4", (0, 4, 8, 12)),
    ("0-12:6", (0, 6, 12)), ("8,0,4", (0, 4, 8)), ("2-4,2", (2, 3, 4)), ((4, 0), (0, 4)),
    (3, (3,)), ("all", None), (None, None),
])
def test_one_layer_grammar(spec, want):
    assert parse_layers(spec) == want


def test_layer_errors_name_the_parameter_and_what_is_available():
    assert parse_layers("all", [0, 1, 2]) == (0, 1, 2)
    with pytest.raises(ValueError, match=r"^layers='0-99': layer\(s\) \[3, 4.*available: 0..2"):
        parse_layers("0-99", range(3))
    with pytest.raises(KeyError, match=r"depth='x': cannot read 'x'"):
        parse_layers("x", param="depth", error=KeyError)
    with pytest.raises(ValueError, match="selects no layer"):
        parse_layers("3:1", range(5))
    with pytest.raises(ValueError, match="step"):
        parse_layers("0:4:0")


def test_suggest_is_shared():
    import actstore.errors
    import probes.errors
    import scenegen.errors

    assert scenegen.errors.suggest is suggest and probes.errors.suggest is suggest
    assert actstore.errors.suggest is suggest
    assert suggest("projektor", ["projector", "lm.resid"]) == " Did you mean 'projector'?"
    assert suggest("zzz", ["projector"]) == ""


def _params(command: str, args: list[str]) -> dict:
    cmd = cli.spatialbind.get_command(None, command)
    return cmd.make_context(command, args).params


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    for d in ("d", "o", "s"):  # options that must name existing folders
        (tmp_path / d).mkdir()
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("command", ["patch", "ablate", "amplify"])
def test_intervention_commands_take_both_prompt_and_progress_spellings(command):
    base = ["--model", "m", "--data", "d", "--out", "o"]
    assert _params(command, base + ["--prompt-kind", "yesno"])["prompt"] == "yesno"
    assert _params(command, base + ["--prompt", "yesno"])["prompt"] == "yesno"  # documented alias
    p = _params(command, base + ["--no-progress"])
    assert p["progress"] is False and p["quiet"] is False
    assert _params(command, base + ["--quiet"])["quiet"] is True  # documented alias
    assert _params(command, base)["progress"] is True


@pytest.mark.parametrize("command, args", [
    ("evaluate", ["--model", "m", "--data", "d", "--out", "o"]),
    ("generate", ["--preset", "p", "--out", "o"]),
    ("extract", ["--model", "m", "--data", "d", "--store", "s"]),
    ("probe", ["--store", "s", "--model", "m", "--out", "o"]),
    ("demo", []),
])
def test_progress_flag_everywhere(command, args):
    assert _params(command, args + ["--no-progress"])["progress"] is False
    assert _params(command, args + ["--progress"])["progress"] is True


def test_cli_maps_parameter_names_to_the_flags_given():
    patch = cli.spatialbind.get_command(None, "patch")
    msg = "layers='0,99': layer(s) [99] not in this model's residual sites; prompt='x'"
    assert cli.flag_message(msg, patch, ["--layers", "0,99", "--prompt", "x"]) == (
        "--layers '0,99': layer(s) [99] not in this model's residual sites; --prompt-kind 'x'")
    # a value that came from a config file or a default keeps its parameter name
    assert cli.flag_message(msg, patch, ["--model", "m"]) == msg
    gen = cli.spatialbind.get_command(None, "generate")
    assert cli.flag_message("n=500 exceeds", gen, ["--config", "c.json"]) == "n=500 exceeds"
    assert cli.flag_message("n=500 exceeds", gen, ["--n", "500"]) == "--n 500 exceeds"


def test_library_speaks_parameters_and_the_cli_prints_the_flag(tmp_path):
    from click.testing import CliRunner

    from interventions.amplification import AmplifyConfig
    from interventions.errors import InterventionError

    with pytest.raises(InterventionError, match=r"^alphas='5:1:1' is an empty range"):
        AmplifyConfig(alphas="5:1:1")
    r = CliRunner().invoke(cli.spatialbind, ["amplify", "--model", "m", "--data", "d", "--out",
                                             str(tmp_path / "x"), "--alphas", "5:1:1",
                                             "--direction", "mean-diff"])
    assert r.exit_code == 1
    assert r.output.strip().startswith("Error: --alphas '5:1:1' is an empty range"), r.output


@pytest.mark.parametrize("argv, words", [
    (["patch", "--bogus"], ["spatialbind patch", "No such option '--bogus'",
                            "'spatialbind patch --help'"]),
    (["nocmd"], ["No such command 'nocmd'", "'spatialbind --help'"]),
])
def test_usage_errors_are_one_line_with_exit_2(argv, words, capsys):
    with pytest.raises(SystemExit) as ex:
        cli.spatialbind.main(args=argv, prog_name="spatialbind")
    assert ex.value.code == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1 and "Usage:" not in err, err
    for w in words:
        assert w in lines[0]


def test_help_and_version_still_exit_0(capsys):
    for argv in (["--help"], ["--version"], ["probe", "--help"]):
        with pytest.raises(SystemExit) as ex:
            cli.spatialbind.main(args=argv, prog_name="spatialbind")
        assert ex.value.code == 0, argv
    assert "probe" in capsys.readouterr().out
