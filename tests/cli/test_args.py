"""Bad input is refused while the command line is parsed, before any work: one line on
stderr, ``sbbench <command>: error: ...``, exit status 2. And the shared argument types."""

from __future__ import annotations

import argparse

import pytest

from sbbench.cli import args as cli_args
from sbbench.cli.main import main
from sbbench.core.errors import UserError
from sbbench.sweep.executors import LocalExecutor, RayExecutor


@pytest.mark.parametrize("argv, message", [
    (["sweep", "--gpu", "cpu", "--temperature", "nan"], "--temperature must be a finite"),
    (["sweep", "--gpu", "cpu", "--temperature", "inf"], "--temperature must be a finite"),
    (["sweep", "--gpu", "cpu", "--rep-ms", "inf"], "--rep-ms must be a finite number > 0"),
    (["sweep", "--gpu", "cpu", "--warmup-ms", "nan"], "--warmup-ms must be a finite"),
    (["sweep", "--gpu", "cpu", "--rep-ms", "-5"], "--rep-ms must be a finite number > 0"),
    (["sweep", "--gpu", "cpu", "--seq-len", "128,,256"], "--seq-len takes comma-separated"),
    (["sweep", "--gpu", "cpu", "--seq-len", "128,"], "--seq-len takes comma-separated"),
    (["sweep", "--gpu", "cpu", "--features", "8,x"], "--features takes comma-separated"),
    (["sweep", "--gpu", "cpu", "--methods", "exact,,lsh"], "empty item"),
    (["sweep", "--gpu", "cpu", "--threads", "-1"], "--threads must be an integer >= 0"),
    (["sweep", "--gpu", "cpu", "--model-only"], "nothing to model on a CPU"),
    (["sweep", "--gpu", "cpu", "--model-only", "--dry-run"], "nothing to model on a CPU"),
    (["sweep", "--gpu", "cpu", "--grid", "."], "is a directory"),
    (["sweep", "--gpu", "cpu", "--strategy", "x"], "unrecognized arguments"),
    (["tune", "--gpu", "cpu", "--rep-ms", "inf"], "--rep-ms must be a finite number >= 0"),
    (["tune", "--gpu", "cpu", "--warmup-ms", "nan"], "--warmup-ms must be a finite"),
    (["tune", "--gpu", "cpu", "--warmup-ms", "-1"], "--warmup-ms must be a finite"),
    (["tune", "--gpu", "cpu", "--within", "inf"], "--within must be a finite"),
    (["tune", "--gpu", "cpu", "--batch", "0"], "--batch must be an integer >= 1"),
    (["tune", "--gpu", "cpu", "--eta", "1"], "--eta must be an integer >= 2"),
    (["tune", "--gpu", "cpu", "--threads", "1,,2"], "--threads takes comma-separated"),
    (["tune", "--gpu", "cpu", "--address", "x:1"], "--address needs --executor ray"),
    (["tune", "--gpu", "cpu", "--max-attempts", "0"], "--max-attempts must be an integer"),
    (["accuracy", "--temperatures", "1,nan"], "--temperatures must be comma-separated"),
    (["accuracy", "--temperatures", "inf"], "--temperatures must be comma-separated"),
    (["accuracy", "--temperatures", "1,,2"], "--temperatures must be comma-separated"),
    (["accuracy", "--kinds", "gaussian,"], "--kinds takes comma-separated names"),
    (["select", "--gpu", "cpu", "--targets", "1%,,5%"], "--targets takes comma-separated"),
    (["select", "--gpu", "cpu", "--targets", "nan"], "--targets takes comma-separated"),
    (["select", "--gpu", "cpu", "--store", "."], "is a directory"),
    (["check", "--baseline", "a.json", "--current", "b.json", "--factor", "nan"],
     "--factor must be a finite number > 1"),
    (["check", "--baseline", "a.json", "--current", "b.json", "--metric-factor", "time="],
     "--metric-factor takes comma-separated METRIC=FACTOR"),
    (["check", "--baseline", "a.json", "--current", "b.json", "--error-atol", "-1"],
     "--error-atol must be a finite number >= 0"),
    (["report", "--gpu", "cpu,"], "--gpu takes comma-separated names"),
    (["check", "--baseline", "a.json"], "required: --current"),
], ids=lambda value: " ".join(value) if isinstance(value, list) else None)
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"sbbench {argv[0]}: error:"), err
    assert message in err, err
    assert not list(tmp_path.iterdir())  # refused before any work: nothing written


def test_unknown_command_is_one_line(capsys):
    assert main(["nosuchcommand"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("sbbench: error:")


@pytest.mark.parametrize("text, items", [
    ("1024", ["1024"]), (" 1024 , 4096 ", ["1024", "4096"]), ("a,b,a", ["a", "b", "a"]),
])
def test_split_list(text, items):
    assert cli_args.split_list(text) == items


@pytest.mark.parametrize("text", ["", " ", ",", "1,", ",1", "1,,2", "1, ,2"])
def test_split_list_refuses_empty_items(text):
    with pytest.raises(ValueError):
        cli_args.split_list(text)


def test_number_types():
    assert cli_args.positive_int("3") == 3
    assert cli_args.positive_float("2.5") == 2.5
    assert cli_args.nonnegative_float("0") == 0.0
    assert cli_args.int_list()("64, 128") == (64, 128)
    assert cli_args.float_list("0.5,2") == (0.5, 2.0)
    assert cli_args.name_list()("a, b, a") == ("a", "b")
    for parse, text in [(cli_args.positive_int, "0"), (cli_args.positive_int, "1.5"),
                        (cli_args.positive_float, "0"), (cli_args.positive_float, "nan"),
                        (cli_args.positive_float, "-inf"), (cli_args.nonnegative_float, "inf"),
                        (cli_args.int_list(), "1,0"), (cli_args.int_list(even=True), "3"),
                        (cli_args.float_list, "1,-1"), (cli_args.name_list(("a",)), "b")]:
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)


def test_as_text_checks_and_keeps_the_text():
    check = cli_args.as_text(cli_args.int_list())
    assert check(" 1024, 4096") == "1024,4096"
    with pytest.raises(argparse.ArgumentTypeError):
        check("1024,x")


def test_list_text():
    assert cli_args.list_text((64, 128)) == "64,128"
    assert cli_args.list_text(25.0) == "25"
    assert cli_args.list_text("auto") == "auto"


def test_report_device_is_a_deprecated_alias_of_gpu(capsys):
    from sbbench.cli.main import build_parser

    args = build_parser().parse_args(["report", "--device", "cpu", "--gpu", "l4,h100-sxm"])
    assert [n for names in args.gpu for n in names] == ["cpu", "l4", "h100-sxm"]
    err = capsys.readouterr().err.strip()
    assert err == "sbbench report: note: --device is deprecated; use --gpu"
    assert "--device" not in build_parser()._subparsers._group_actions[0].choices[
        "report"].format_help()


def test_executor_flags():
    parser = argparse.ArgumentParser()
    cli_args.add_executor_arguments(parser)
    local = parser.parse_args([])
    assert isinstance(cli_args.executor_from_args(local), LocalExecutor)
    assert cli_args.executor_words(local) == []
    args = parser.parse_args(["--executor", "ray", "--address", "auto", "--max-attempts", "2",
                              "--allow-mixed-versions"])
    executor = cli_args.executor_from_args(args)
    assert isinstance(executor, RayExecutor)
    assert (executor.address, executor.max_attempts, executor.allow_mixed_versions) == (
        "auto", 2, True)
    assert cli_args.executor_words(args) == [
        "--executor", "ray", "--address", "auto", "--max-attempts", "2",
        "--allow-mixed-versions"]
    with pytest.raises(UserError, match="--address needs"):
        cli_args.executor_from_args(parser.parse_args(["--address", "x:1"]))
