"""Where a result came from: code revision, package versions, machine names, time.

The one place that reads provenance. Every row (``Record``), report and tuning file takes
its git revision, versions, CPU name and timestamp from here, in one format.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from sbbench import __version__

# The repository root of a source checkout (sbbench/core/provenance.py -> ../../..).
SOURCE_ROOT = Path(__file__).resolve().parents[2]


def now_utc() -> str:
    """The current time, ISO 8601 in UTC, to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def package_version(name: str) -> str | None:
    """Installed version of a distribution, without importing it (importing triton
    costs seconds)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def git_revision(repo_dir: str | os.PathLike | None = None) -> str | None:
    """Short commit of the sbbench checkout, "+dirty" if tracked files changed; None
    outside a git checkout (an installed wheel) or without git."""
    cwd = Path(repo_dir) if repo_dir else SOURCE_ROOT
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=cwd,
                             capture_output=True, text=True, timeout=10, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def revision_text(repo_dir: str | os.PathLike | None = None) -> str:
    """``git_revision`` as text: "unknown" outside a git checkout."""
    return git_revision(repo_dir) or "unknown"


# What "the code that measured" is: the package's own source and data. Generated
# output in a checkout (reports/, tuning_configs/, stores) is not part of it.
PACKAGE_DIR = Path(__file__).resolve().parents[1]


def _source_files() -> list[tuple[str, Path]]:
    """(name in the hash, path) of every file the code version covers: sbbench/**/*.py,
    the kernels (inside the package when installed, beside it in a checkout) and the
    package data."""
    # tuning_configs/ is data the tool writes (installed inside the package, beside it in
    # a checkout): left out, so a checkout and its installed wheel have one code version
    files = {path.relative_to(PACKAGE_DIR).as_posix(): path
             for path in PACKAGE_DIR.rglob("*.py")
             if "__pycache__" not in path.parts
             and path.relative_to(PACKAGE_DIR).parts[0] != "tuning_configs"}
    for kernels in (PACKAGE_DIR / "kernels", SOURCE_ROOT / "kernels"):
        if kernels.is_dir():
            for path in kernels.glob("*.py"):
                files.setdefault(f"kernels/{path.name}", path)
            break
    data = PACKAGE_DIR / "data"
    for path in data.rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            files[path.relative_to(PACKAGE_DIR).as_posix()] = path
    return sorted(files.items())


@functools.lru_cache(maxsize=1)
def source_hash() -> str:
    """sha256 of the package's source files (names and contents), in hex."""
    digest = hashlib.sha256()
    for name, path in _source_files():
        digest.update(name.encode() + b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def code_version() -> str:
    """The code part of a result's key: ``<version>+src.<hash of the source>``.

    Changed source measures its points again; writing reports, tuning files or stores in
    the checkout, or committing, does not. The git revision is a provenance field of its
    own (``git_revision``).
    """
    return f"{__version__}+src.{source_hash()[:12]}"


def cpu_model_name() -> str:
    """The CPU's model name ("AMD EPYC 7B13"), or the platform's best guess."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def cuda_version_text(version: int) -> str:
    """NVML's integer CUDA version (12040) as text ("12.4")."""
    return f"{version // 1000}.{(version % 1000) // 10}"


def _driver_versions() -> tuple[str | None, str | None]:
    """(NVIDIA driver version, newest CUDA the driver supports), None without NVML."""
    try:
        nvml = importlib.import_module("pynvml")
        nvml.nvmlInit()
        return (_text(nvml.nvmlSystemGetDriverVersion()),
                cuda_version_text(nvml.nvmlSystemGetCudaDriverVersion()))
    except Exception:
        return None, None


@functools.lru_cache(maxsize=1)
def versions() -> dict:
    """Versions a result depends on: torch, triton (None if absent), NVIDIA driver and
    CUDA (None without them), sbbench, Python, and the git revision of this checkout.

    Cached for the process (a sweep's code does not change under it); call
    ``versions.cache_clear()`` to read them again.
    """
    import torch

    driver, cuda_driver = _driver_versions()
    return {
        "torch": torch.__version__,
        "triton": package_version("triton"),
        "driver": driver,
        "cuda": torch.version.cuda,  # the CUDA runtime torch was built with
        "cuda_driver": cuda_driver,  # the newest CUDA the driver supports
        "sbbench": __version__,
        "python": platform.python_version(),
        "git_revision": git_revision(),
    }


def machine() -> dict:
    """The machine a report was made on: CPU name, cores, OS, and versions."""
    return {
        "cpu": cpu_model_name(),
        "cores": os.cpu_count(),
        "os": f"{platform.system()} {platform.release()}",
        **versions(),
    }
