"""Every ``genseek`` command's ``--help``: a description for every option, the default of
every option that has one, and usage lines that name the command as it is typed.

The parsers are driven in-process, the way ``genseek`` runs them: the main parser and its
subcommands, each ``genseek train RECIPE`` (the recipe module's ``main``, which
``genseek train`` calls) and ``genseek es ACTION``. Nothing here trains or loads a model.
"""

from __future__ import annotations

import argparse
import contextlib

import pytest

from genseek import __version__
from genseek.cli import TRAIN_RECIPES, build_parser
from genseek.cli import main as genseek_main
from genseek.cliutil import HelpFormatter

RECIPES = sorted(TRAIN_RECIPES)


def run(capsys, argv: list[str]) -> tuple[int, str, str]:
    """``genseek ARGV`` in-process: (exit status, stdout, stderr)."""
    try:
        rc = genseek_main(argv)
    except SystemExit as exc:  # argparse: --help, --version and usage errors
        rc = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return rc, out, err


def recipe_parser(monkeypatch, recipe: str) -> argparse.ArgumentParser:
    """The parser that ``genseek train RECIPE`` parses its options with: the recipe module's
    ``main`` runs as ``cmd_train`` calls it, and its parser is caught at ``parse_args``."""
    import importlib

    module, _ = TRAIN_RECIPES[recipe]
    seen: list[argparse.ArgumentParser] = []

    def caught(self, args=None, namespace=None):
        seen.append(self)
        raise SystemExit(0)

    argv = [recipe, "--help"]
    with monkeypatch.context() as m:
        m.setattr(argparse.ArgumentParser, "parse_args", caught)
        with contextlib.suppress(SystemExit):
            importlib.import_module(module).main(argv)
    assert seen, f"{module}.main built no parser"
    return seen[-1]


def es_parser() -> argparse.ArgumentParser:
    from genseek.api.elastic import build_parser as build_es_parser

    return build_es_parser()


def walk(parser: argparse.ArgumentParser, name: str):
    """``(name, parser)`` for a parser and every subparser under it."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from walk(sub, f"{name} {sub_name}")


def all_parsers(monkeypatch) -> list[tuple[str, argparse.ArgumentParser]]:
    parsers = list(walk(build_parser(), "genseek"))
    parsers += [(f"genseek train {r}", recipe_parser(monkeypatch, r)) for r in RECIPES]
    parsers += list(walk(es_parser(), "genseek es"))
    return parsers


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings
            and not isinstance(a, (argparse._HelpAction, argparse._VersionAction))]


def action_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The help lines ``--help`` prints for one action."""
    formatter = parser._get_formatter()
    formatter.add_argument(action)
    return formatter.format_help()


# -- every parser -----------------------------------------------------------------------------


def test_every_parser_uses_the_shared_help_format(monkeypatch):
    parsers = all_parsers(monkeypatch)
    names = [name for name, _ in parsers]
    assert "genseek train" in names and "genseek es register" in names
    assert {f"genseek train {r}" for r in RECIPES} <= set(names)
    for name, parser in parsers:
        assert parser.formatter_class is HelpFormatter, name
        assert (parser.description or "").strip(), f"{name}: no description"


def test_every_option_has_a_help_text(monkeypatch):
    missing = [f"{name}: {'/'.join(a.option_strings)}" for name, parser in all_parsers(monkeypatch)
               for a in options(parser) if not (a.help or "").strip()]
    assert not missing, "options without a help text: " + ", ".join(missing)


def test_every_option_with_a_default_shows_it(monkeypatch):
    hidden = []
    for name, parser in all_parsers(monkeypatch):
        for action in options(parser):
            if action.default is None or action.default is False \
                    or action.default is argparse.SUPPRESS:
                continue
            if "default" not in action_help(parser, action):
                hidden.append(f"{name}: {'/'.join(action.option_strings)}={action.default!r}")
    assert not hidden, "defaults missing from --help: " + ", ".join(hidden)


def test_no_default_is_printed_twice(monkeypatch):
    twice = [f"{name}: {'/'.join(a.option_strings)}" for name, parser in all_parsers(monkeypatch)
             for a in options(parser) if action_help(parser, a).count("(default") > 1]
    assert not twice, "options whose help says its default twice: " + ", ".join(twice)


# -- what the user sees -----------------------------------------------------------------------


@pytest.mark.parametrize("recipe", ["genre", "seal", "dsi"])
def test_generative_recipe_help_names_the_recipe(capsys, recipe):
    rc, out, err = run(capsys, ["train", recipe, "--help"])
    assert rc == 0 and err == ""
    usage = out.split("\n\n")[0]
    assert usage.startswith(f"usage: genseek train {recipe} ")
    assert "{genre,seal,dsi}" not in out
    assert f"{recipe.upper()} recipe" in out  # the description says which recipe it is


def test_generative_main_keeps_the_recipe_as_first_argument(capsys):
    from genseek.retrievers import generative_train

    assert generative_train.main(["seal", "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: genseek train seal ")
    assert generative_train.main(["nope"]) == 2  # one line: an invalid choice
    err = capsys.readouterr().err
    assert "invalid choice: 'nope'" in err and "Traceback" not in err


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_help_is_plain_text(capsys, recipe):
    rc, out, err = run(capsys, ["train", recipe, "--help"])
    assert rc == 0 and err == ""
    assert out.startswith(f"usage: genseek train {recipe} ")
    assert "``" not in out and "**" not in out  # no reStructuredText markup


def test_train_first_help_has_a_plain_description(capsys):
    rc, out, _ = run(capsys, ["train", "first", "--help"])
    assert rc == 0 and "``" not in out
    assert "FIRST recipe" in out and "(default: 60)" in out  # --steps


@pytest.mark.parametrize("argv", [["es", "--help"], ["es", "register", "--help"],
                                  ["es", "sync", "--help"]])
def test_es_help(capsys, argv):
    rc, out, err = run(capsys, argv)
    assert rc == 0 and err == ""
    assert out.startswith("usage: genseek es")
    assert "``" not in out


def test_version(capsys):
    rc, out, err = run(capsys, ["--version"])
    assert rc == 0
    assert out.strip() == f"genseek {__version__}"


# -- bad values: one error line, no traceback --------------------------------------------------


@pytest.mark.parametrize("argv, fragment", [
    (["train", "genre", "--dataset", "d", "--out", "o", "--steps", "0"], "--steps"),
    (["train", "dsi", "--dataset", "d", "--out", "o", "--batch", "many"], "--batch"),
    (["train", "seal", "--dataset", "d", "--out", "o", "--lr", "-1"], "--lr"),
    (["train", "first", "--out", "o", "--steps", "0"], "--steps"),
    (["train", "first", "--out", "o", "--max-minutes", "0"], "--max-minutes"),
    (["train", "sparse", "--dataset", "d", "--collection", "c", "--out", "o",
      "--batch-queries", "0"], "--batch-queries"),
    (["train", "repconc", "--vectors", "v", "--dataset", "d", "--out", "o", "--bytes", "0"],
     "--bytes"),
    (["train", "repconc", "--vectors", "v", "--dataset", "d", "--out", "o", "--tau", "0"],
     "--tau"),
    (["es", "register", "--es", "http://es", "--genseek", "http://g", "--top-n", "0"],
     "--top-n"),
    (["es", "sync", "--es", "http://es", "--index", "i", "c", "--batch-size", "x"],
     "--batch-size"),
])
def test_a_bad_value_is_refused_with_one_line(capsys, argv, fragment):
    rc, out, err = run(capsys, argv)
    assert rc == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and fragment in errors[0], err
    assert err.splitlines()[-1] == errors[0]  # the usage first, the error last
