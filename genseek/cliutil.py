"""What every genseek command-line parser shares (the main CLI, the training recipes, the
Elasticsearch tools): one help format that shows each option's default, and argument types
that refuse a bad value with one line."""

from __future__ import annotations

import argparse
import math
import textwrap


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``(default: X)`` after every option that has a default (flags and options without one
    show none). Descriptions and epilogs are wrapped paragraph by paragraph; an indented line
    (an example, a list entry) is kept as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out: list[str] = []
        words: list[str] = []

        def flush() -> None:
            if words:
                out.extend(textwrap.wrap(" ".join(words), width, initial_indent=indent,
                                         subsequent_indent=indent))
                words.clear()

        for line in text.splitlines():
            if not line.strip():
                flush()
                out.append("")
            elif line.startswith(" ") or line.rstrip().endswith(":"):
                flush()
                out.append(indent + line)
            else:
                words.append(line.strip())
        flush()
        return "\n".join(out)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "%(default)" in text or action.default is None or action.default is False \
                or action.default == argparse.SUPPRESS \
                or isinstance(action, argparse._StoreConstAction):
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"
        return text


def positive(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def weights(text: str) -> list[float]:
    """argparse type: comma-separated non-negative numbers (``0.3,0.7``)."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers such as 0.3,0.7, not {text!r}") from None
    if any(v < 0 or not math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"weights must be finite and >= 0, not {text!r}")
    return values


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, not {text!r}") from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, not {text!r}")
    return value


def ray_address(text: str) -> str:
    """argparse type: a Ray address (``local``, ``auto``, ``HOST:PORT``), with Ray installed."""
    import importlib.util

    from genseek.cluster import INSTALL, parse_address
    from genseek.errors import GenseekError

    try:
        parse_address(text)
    except GenseekError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix(f"--ray {text!r}: ")) from None
    try:
        missing = importlib.util.find_spec("ray") is None
    except ValueError:  # a module named ray without a spec
        missing = True
    if missing:
        raise argparse.ArgumentTypeError(f"Ray is not installed; install the extra: {INSTALL}")
    return text


def resource(text: str) -> tuple[str, float]:
    """argparse type: ``NAME`` or ``NAME=AMOUNT`` (a Ray custom resource, amount > 0)."""
    name, sep, amount = text.partition("=")
    value = positive_float(amount) if sep else 1.0
    if not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME or NAME=AMOUNT, not {text!r}")
    return name.strip(), value
