"""The code version of a row: a hash of the package's source, not of the checkout."""

from __future__ import annotations

import shutil

from sbbench.core import provenance
from sbbench.sweep.grid import Grid, expand
from sbbench.sweep.runner import Settings, run_sweep
from sbbench.sweep.store import Store


def _version_of(root, monkeypatch) -> str:
    monkeypatch.setattr(provenance, "PACKAGE_DIR", root / "sbbench")
    monkeypatch.setattr(provenance, "SOURCE_ROOT", root)
    provenance.source_hash.cache_clear()
    try:
        return provenance.code_version()
    finally:
        provenance.source_hash.cache_clear()


def test_generated_files_do_not_change_the_code_version(tmp_path, monkeypatch):
    root = tmp_path / "checkout"
    shutil.copytree(provenance.PACKAGE_DIR, root / "sbbench",
                    ignore=shutil.ignore_patterns("__pycache__"))
    kernels = root / "sbbench" / "kernels"  # installed: the kernels inside the package
    if not (provenance.PACKAGE_DIR / "kernels").is_dir():  # a checkout: kernels/ beside
        kernels = root / "kernels"
        shutil.copytree(provenance.SOURCE_ROOT / "kernels", kernels,
                        ignore=shutil.ignore_patterns("__pycache__"))
    before = _version_of(root, monkeypatch)
    assert before.startswith(f"{provenance.__version__}+src.")
    for folder in (root / "reports", root / "tuning_configs", root / "sbbench" / "tuning_configs"):
        folder.mkdir(exist_ok=True)
        (folder / "cpu.yaml").write_text("written by a run\n")
        (folder / "__init__.py").write_text("# installed tuning_configs is a package\n")
    (root / "results.sqlite").write_bytes(b"not code")
    assert _version_of(root, monkeypatch) == before
    (kernels / "feature_map.py").write_text("# a changed kernel\n", "utf-8")
    assert _version_of(root, monkeypatch) != before


def test_a_rerun_with_another_git_revision_measures_nothing(tmp_path):
    grid = Grid(name="t", seq_len=(64,), head_dim=(16,), heads=(1,),
                methods=("exact", "performer"), n_features=(8,), seeds=(0,))
    points = expand(grid).points

    def settings(revision: str) -> Settings:
        return Settings(device="cpu", seeds=(0,), warmup_ms=1.0, rep_ms=2.0, min_samples=3,
                        measure_memory=False, measure_energy=False, git_revision=revision)

    with Store(tmp_path / "r.sqlite") as store:
        first = run_sweep(points, settings("abc"), store, progress=False)
        again = run_sweep(points, settings("abc+dirty"), store, progress=False)
    assert first.measured == 2
    assert again.measured == 0 and again.resumed == 2
