"""The help formatter shows a flag's default only where it says something (hand-written cases)."""

import argparse

from megatron_evomoe.help_format import HelpFormatter


def _help_of(**kwargs) -> str:
    parser = argparse.ArgumentParser(prog="p", formatter_class=HelpFormatter)
    parser.add_argument("--flag", **kwargs)
    lines = parser.format_help().split("--flag", 2)[-1]
    return " ".join(lines.split())


def test_a_value_default_follows_the_help():
    assert _help_of(type=int, default=4, help="four") == "FLAG four (default: 4)"
    assert _help_of(nargs="*", default=["a"], help="list") == "[FLAG ...] list (default: ['a'])"


def test_none_and_off_switch_defaults_are_not_shown():
    assert _help_of(default=None, help="default: --other") == "FLAG default: --other"
    assert _help_of(action="store_true", help="on/off") == "on/off"
    assert _help_of(action="store_false", dest="on", help="turns it off") == "turns it off"  # not "(default: True)"


def test_a_default_the_help_shows_itself_is_not_repeated():
    assert _help_of(type=int, default=2, help="k, default %(default)s") == "FLAG k, default 2"
    text = _help_of(action=argparse.BooleanOptionalAction, default=True, help="both spellings")
    assert text.count("(default: True)") == 1
