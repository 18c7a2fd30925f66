"""Where the commands write by default: the working folder (./sbbench-reports,
./sbbench-tuning), never the installed package or the checkout's committed files; an
explicit folder still goes anywhere."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TINY_GRID

from sbbench import tuned
from sbbench.cli.main import build_parser, main


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(tuned.ENV_DIR, raising=False)
    (tmp_path / "tiny.yaml").write_text(TINY_GRID)
    return tmp_path


def _shipped_files() -> dict[str, bytes]:
    folder = tuned.tuning_dir()
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.yaml"))}


def test_sweep_report_and_select_write_to_the_working_folder(workdir, monkeypatch, capsys):
    shipped = _shipped_files()
    assert main(["sweep", "--gpu", "cpu", "--grid", "tiny.yaml", "--store", "r.sqlite",
                 "--no-memory", "--no-progress", "--report"]) == 0
    assert (workdir / "sbbench-reports" / "cpu" / "README.md").is_file()
    (workdir / "sbbench-reports" / "cpu" / "README.md").unlink()
    assert main(["report", "--store", "r.sqlite"]) == 0
    assert (workdir / "sbbench-reports" / "cpu" / "README.md").is_file()
    capsys.readouterr()

    assert main(["select", "--gpu", "cpu", "--store", "r.sqlite"]) == 0
    err = capsys.readouterr().err
    assert (workdir / "sbbench-tuning" / "cpu.yaml").is_file()
    assert (workdir / "sbbench-reports" / "cpu" / "budgets.md").is_file()
    assert "to use it: SBBENCH_TUNING_DIR=sbbench-tuning" in err
    assert _shipped_files() == shipped  # the shipped tuning_configs/ untouched
    # the file is what from_tuned reads once the variable points at it
    monkeypatch.setenv(tuned.ENV_DIR, str(workdir / "sbbench-tuning"))
    assert tuned.load("cpu").budgets


def test_explicit_folders_still_win(workdir):
    assert main(["sweep", "--gpu", "cpu", "--grid", "tiny.yaml", "--store", "r.sqlite",
                 "--no-memory", "--no-progress", "--report", "--report-out", "mine"]) == 0
    assert (workdir / "mine" / "cpu" / "README.md").is_file()
    assert not (workdir / "sbbench-reports").exists()
    assert main(["select", "--gpu", "cpu", "--store", "r.sqlite", "--tuning-dir", "tc",
                 "--report-out", "mine"]) == 0
    assert (workdir / "tc" / "cpu.yaml").is_file()
    assert not (workdir / "sbbench-tuning").exists()


def _tune_request(argv):
    from sbbench.cli.tune import build_request
    from sbbench.core.devices import get_device

    args = build_parser().parse_args(["tune", "--gpu", "cpu", *argv])
    return build_request(args, get_device("cpu"))


def test_tune_writes_to_the_working_folder_unless_told(workdir, monkeypatch):
    assert _tune_request([]).out_dir == Path("sbbench-tuning")
    assert _tune_request(["--out-dir", "x"]).out_dir == Path("x")
    monkeypatch.setenv(tuned.ENV_DIR, str(workdir / "env"))
    assert _tune_request([]).out_dir == workdir / "env"  # where from_tuned reads


def test_accuracy_and_report_defaults():
    parser = build_parser()
    assert parser.parse_args(["accuracy"]).out == "sbbench-reports/accuracy"
    assert parser.parse_args(["report"]).out == "sbbench-reports"
    assert parser.parse_args(["sweep"]).report_out == "sbbench-reports"
    assert parser.parse_args(["select"]).report_out == "sbbench-reports"


def test_gitignore_lists_the_output_folders():
    ignored = (Path(__file__).resolve().parents[2] / ".gitignore").read_text().split()
    assert "sbbench-reports/" in ignored and "sbbench-tuning/" in ignored
