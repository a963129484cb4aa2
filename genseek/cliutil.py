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
