"""How ``--help`` shows a flag: its help text, then its default where the default says something.

One formatter for every parser of the repository (the training scripts and the tools that share
their flags), so a default is shown the same way everywhere and never written by hand into a help
text, where it would drift from the real one.
"""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Appends ``(default: X)`` to a flag's help, like ``argparse.ArgumentDefaultsHelpFormatter``,
    except where X says nothing: a default of None (the help says what is used instead) and the
    default of a switch (``store_true`` / ``store_false``: it acts when given, whatever its
    destination's default; ``--x/--no-x`` pairs do show theirs). A help that shows its default
    itself (``%(default)s``) is left alone.
    Descriptions keep their line breaks (the tools' docstrings hold example commands)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or action.default is None or action.default is argparse.SUPPRESS:
            return text
        if action.nargs == 0 and isinstance(action.const, bool):  # store_true / store_false
            return text
        if not action.option_strings and action.nargs not in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return text  # a required positional has no default
        return f"{text} (default: %(default)s)"
