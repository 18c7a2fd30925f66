"""Where the tuning files live, and reading / writing them (layer 2).

Where the files are: ``$SBBENCH_TUNING_DIR`` when set (it replaces the shipped folder
entirely, so a test or a user sees only their own files), else the package
``sbbench.tuning_configs`` (the top-level ``tuning_configs/`` of the checkout). Writes
replace one section at a time under a folder lock, validated before the atomic rename.
"""

from __future__ import annotations

import contextlib
import copy
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import yaml

from sbbench.core.errors import UserError
from sbbench.tuned.schema import (
    SCHEMA_VERSION,
    SECTIONS,
    TunedTable,
    TuningFileError,
    parse,
)

ENV_DIR = "SBBENCH_TUNING_DIR"

def tuning_dir() -> Path:
    """The folder read and written: ``$SBBENCH_TUNING_DIR`` if set, else the shipped one."""
    override = os.environ.get(ENV_DIR)
    if override:
        return Path(override)
    import sbbench.tuning_configs as shipped

    return Path(next(iter(shipped.__path__)))


def canonical_device(device: str) -> str:
    """Profile name of ``device`` ("h100" -> "h100-sxm"; "auto" -> what is here)."""
    from sbbench.core.devices import detect_local, get_device

    if str(device).strip().lower() == "auto":
        detected = detect_local()
        if detected.name is None:
            raise UserError(f"device auto: the local {detected.describe()} has no profile "
                            f"(see `sbbench devices`), so no tuning file applies")
        return detected.name
    return get_device(device).name


def file_for(device: str, folder: Path | str | None = None) -> Path:
    """The tuning file of profile ``device`` in ``folder`` (default: :func:`tuning_dir`)."""
    return (Path(folder) if folder else tuning_dir()) / f"{device}.yaml"


_CACHE: dict[Path, tuple[float, TunedTable]] = {}


def load(device: str, *, folder: Path | str | None = None) -> TunedTable:
    """The validated tuning table of ``device`` (a profile name or alias, or "auto").

    A device without a file gives an empty table (every lookup falls back to defaults);
    a file that breaks the schema raises TuningFileError naming the key.
    """
    name = canonical_device(device)
    if folder is None:
        _check_override()
    path = file_for(name, folder)
    try:
        mtime = path.stat().st_mtime_ns
    except FileNotFoundError:
        return TunedTable(name, None, {}, [], {})
    cached = _CACHE.get(path)
    if cached and cached[0] == mtime:
        return cached[1]
    table = _read(path, name)
    _CACHE[path] = (mtime, table)
    return table


def _check_override() -> None:
    """A ``$SBBENCH_TUNING_DIR`` that is not a folder is a mistake (a typo would otherwise
    read as "no table for any device")."""
    override = os.environ.get(ENV_DIR)
    if override and not Path(override).is_dir():
        raise UserError(f"{ENV_DIR}={override}: no such folder; create it, point "
                        f"{ENV_DIR} at the folder holding <device>.yaml, or unset it")


def _read(path: Path, device: str) -> TunedTable:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise TuningFileError(f"{path}: not valid YAML: {err}".replace("\n", " ")) from None
    if data is None:
        raise TuningFileError(f"{path}: the file is empty; delete it (no tuned table) or "
                              f"write it with `sbbench tune` / `sbbench select`")
    return parse(data, device=device, source=str(path), path=path)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the folder of ``path`` (flock on the directory itself:
    no lock file is left behind), so `tune` and `select` writing one device's file at
    the same time do not lose each other's section. Best effort where flock is missing."""
    try:
        import fcntl

        fd = os.open(path.parent, os.O_RDONLY)
    except (ImportError, OSError):
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class _Dumper(yaml.SafeDumper):
    """Block style for the structure, flow style for small leaf mappings (configs, shapes)."""


def _represent_dict(dumper, data):
    leaf = all(not isinstance(v, (dict, list)) for v in data.values())
    return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(),
                                    flow_style=leaf and len(data) <= 12)


def _represent_list(dumper, data):
    leaf = all(not isinstance(v, (dict, list)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data,
                                     flow_style=leaf and len(data) <= 12)


_Dumper.add_representer(dict, _represent_dict)
_Dumper.add_representer(list, _represent_list)


def plain(value):
    """``value`` as plain YAML data: str subclasses (torch's version) to str, tuples to
    lists, other objects to their text."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return str(value)


def dumps(data: dict) -> str:
    return yaml.dump(plain(data), Dumper=_Dumper, sort_keys=False, width=100,
                     allow_unicode=True)


def write_section(device: str, section: str, data, *, metadata: dict | None = None,
                  folder: Path | str | None = None) -> Path:
    """Replace one section (``kernels`` or ``budgets``) of ``device``'s file, keeping the
    others; ``metadata`` goes to ``metadata.<section>``. For ``kernels`` the targets in
    ``data`` replace those of the same name and the other targets stay.

    The result is validated before it is written (atomically); a broken existing file is
    an error, never silently overwritten. Returns the path written.
    """
    if section not in SECTIONS:
        raise ValueError(f"section must be one of {', '.join(SECTIONS)}, got {section!r}")
    name = canonical_device(device)
    path = file_for(name, folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        old = {}
        if path.exists():
            old = _read(path, name).raw
        new = {"schema_version": SCHEMA_VERSION, "device": name}
        for key in SECTIONS:
            if key == section:
                if key == "kernels":
                    merged = copy.deepcopy(old.get("kernels") or {})
                    merged.update(copy.deepcopy(data))
                    new[key] = merged
                else:
                    new[key] = copy.deepcopy(data)
            elif old.get(key):
                new[key] = old[key]
        meta = dict(old.get("metadata") or {})
        if metadata is not None:
            meta[section] = metadata
        if meta:
            new["metadata"] = {key: meta[key] for key in SECTIONS if key in meta}
        text = dumps(new)
        parse(yaml.safe_load(text), device=name, source=f"{path} (about to be written)")
        header = (f"# sbbench tuning configs for device {name}: written by `sbbench tune` "
                  f"(kernels) and `sbbench select` (budgets).\n# Validated on load; see "
                  f"sbbench/tuned/schema.py for the schema.\n")
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(header + text)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    _CACHE.pop(path, None)
    return path
