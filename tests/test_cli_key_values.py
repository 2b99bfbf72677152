"""``KEY=VALUE`` options (``--option``, ``--sae-option``): one value per key."""

from __future__ import annotations

import click
import pytest

from scircuits.cli.common import parse_key_values
from tests.cli_helpers import run_cli


def test_values_are_read_as_json_where_they_parse():
    assert parse_key_values(["size=2", "name=x", "flag=true"], "--option") == {
        "size": 2,
        "name": "x",
        "flag": True,
    }


def test_a_key_given_twice_is_refused_naming_both_values():
    with pytest.raises(click.BadParameter, match=r"size is given twice \(2, then '3'\): give it once"):
        parse_key_values(["size=2", "size=3"], "--option")


def test_the_cli_refuses_a_repeated_option_in_one_line(tmp_path):
    done = run_cli("collect", "--option", "size=2", "--option", "size=3", "--out", str(tmp_path / "s"))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "size is given twice" in lines[0]
    assert not (tmp_path / "s").exists()
