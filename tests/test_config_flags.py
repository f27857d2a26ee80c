"""Flags generated from a config dataclass: name, type, default and help from the field and its docstring."""

import argparse
from dataclasses import dataclass
from typing import Literal, Optional

import pytest

from megatron_evomoe.config_flags import add_flags, field_docs, flag, flag_specs, values_from_args


@dataclass
class Example:
    rate: float = 0.5
    """How fast, in 1/s (50% by default)."""
    mode: Literal["a", "b"] = "a"
    """Which mode."""
    count: Optional[int] = None
    """Resolved later from the run."""
    renamed: int = flag(3, name="--megatron-name")
    """A flag whose name is not the field's."""
    verbose: bool = False
    """Say more."""
    enabled: bool = True
    """On unless --no-enabled."""
    diversify: bool = flag(True, name="--no-diversify")
    """Off with --no-diversify."""
    internal: int = flag(0, hidden=True)
    """Set by code."""


def _parse(*argv):
    parser = argparse.ArgumentParser()
    add_flags(parser, flag_specs(Example))
    return parser, parser.parse_args(list(argv))


def test_field_docstrings_are_collected():
    docs = field_docs(Example)
    assert docs["rate"] == "How fast, in 1/s (50% by default)."
    assert docs["renamed"] == "A flag whose name is not the field's."


def test_each_field_becomes_its_flag():
    specs = {spec.field: spec for spec in flag_specs(Example)}
    assert "internal" not in specs
    assert {f: s.name for f, s in specs.items()} == {
        "rate": "--rate", "mode": "--mode", "count": "--count", "renamed": "--megatron-name",
        "verbose": "--verbose", "enabled": "--enabled", "diversify": "--no-diversify",
    }
    assert specs["rate"].kwargs["type"] is float and specs["count"].kwargs["type"] is int
    assert specs["mode"].kwargs["choices"] == ["a", "b"]
    assert specs["rate"].kwargs["help"] == "How fast, in 1/s (50%% by default)."  # argparse-escaped
    parser, args = _parse()
    assert (args.rate, args.mode, args.count, args.megatron_name) == (0.5, "a", None, 3)
    assert "(50% by default)" in parser.format_help()


def test_booleans_and_values_back_into_the_config():
    _, args = _parse("--rate", "2", "--mode", "b", "--count", "7", "--megatron-name", "9", "--verbose",
                     "--no-enabled", "--no-diversify")
    values = values_from_args(flag_specs(Example), args, Example)
    assert values == dict(rate=2.0, mode="b", count=7, renamed=9, verbose=True, enabled=False, diversify=False)
    assert Example(**values).diversify is False
    _, args = _parse()
    assert values_from_args(flag_specs(Example), args, Example) == dict(
        rate=0.5, mode="a", count=None, renamed=3, verbose=False, enabled=True, diversify=True
    )


def test_a_none_for_a_field_that_is_not_optional_keeps_the_field_default():
    args = argparse.Namespace(rate=None, count=None)  # a shared flag left unset, or an older record
    assert values_from_args(flag_specs(Example, ["rate", "count"]), args, Example) == {"count": None}


def test_a_flag_declared_twice_is_added_once():
    parser = argparse.ArgumentParser()
    added = set()
    add_flags(parser, flag_specs(Example, ["rate"]), added)
    add_flags(parser, flag_specs(Example, ["rate"]), added)  # argparse would raise on a duplicate
    assert parser.parse_args(["--rate", "1"]).rate == 1.0
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "a"])  # not added
