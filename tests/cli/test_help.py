"""Every command's --help ends with examples, each on its own line."""

from __future__ import annotations

import pytest

from sbbench.cli.main import _COMMAND_MODULES, main


@pytest.mark.parametrize("command", _COMMAND_MODULES)
def test_help_has_examples(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command.replace("_", "-"), "--help"])  # module ci_bench is command ci-bench
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    examples = out[out.index("examples:"):].splitlines()[1:]
    commands = [line.strip() for line in examples if line.strip().startswith("sbbench ")]
    assert commands, out
    for line in commands:
        # one command per line: a second "sbbench" means two examples ran together, and
        # a "--flag" glued to a path means a line break was lost
        assert line.count("sbbench ") == 1 or "&&" in line, line
        assert ".json--" not in line and ".sqlite--" not in line, line


def test_check_help_keeps_its_confirmation_example_whole(capsys):
    with pytest.raises(SystemExit):
        main(["check", "--help"])
    out = capsys.readouterr().out
    assert "--current ci-1.json --current ci-2.json" in out
    assert "--current ci-1.json      " not in out
