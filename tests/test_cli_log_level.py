"""``$SCIRCUITS_LOG_LEVEL`` on the command line: honoured when -q/-v are not given, one line when unknown."""

from __future__ import annotations

from tests.cli_helpers import run_cli


def test_an_unknown_level_in_the_variable_is_one_line_naming_the_levels():
    done = run_cli("models", env={"SCIRCUITS_LOG_LEVEL": "LOUD"})
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "$SCIRCUITS_LOG_LEVEL: unknown log level 'LOUD': give one of DEBUG, INFO" in lines[0]


def test_a_known_level_is_taken_in_any_case_and_a_flag_wins_over_the_variable():
    assert run_cli("models", env={"SCIRCUITS_LOG_LEVEL": "warning"}).returncode == 0
    verbose = run_cli("-v", "models", env={"SCIRCUITS_LOG_LEVEL": "LOUD"})  # -v decides: not read
    assert verbose.returncode == 0, verbose.stderr
