"""``mtad run``'s arguments parsed without building every command's parser (mtad.cli._parse_run) mean what the
full parser makes of them; anything else is left to the full parser (its help and error messages)."""

from __future__ import annotations

import pytest

from mtad import cli


@pytest.mark.parametrize("argv", [["run"], ["run", "--config", "x.yaml"], ["run", "-c", "x"], ["run", "--config=x"],
                                  ["run", "--conf", "x"], ["run", "--state-dir", "d"], ["run", "--st", "d", "-c", "y"]])
def test_run_arguments_parse_as_the_full_parser_parses_them(argv: list[str]) -> None:
    fast = cli._parse_run(argv)
    assert fast is not None
    assert vars(fast) == vars(cli.build_parser().parse_args(argv))


@pytest.mark.parametrize("argv", [[], ["run", "extra"], ["run", "--bogus"], ["run", "-h"], ["run", "--help"],
                                  ["run", "--he"], ["run", "--config"], ["check-config", "f"], ["run", "--", "x"],
                                  ["passwd"]])
def test_anything_else_is_left_to_the_full_parser(argv: list[str]) -> None:
    assert cli._parse_run(argv) is None
