"""Rules about the repository itself (docs/architecture.md, "Rules").

- Nothing tracked points outside the repository or at notes that are not in it: the
  design notes a contributor needs live in docs/, and a code comment says why, not which
  ticket asked for it.
- Imports point down the layers only (the folder tree is the architecture), checked on
  the source with ``ast``, so an import inside a function counts as much as one at the
  top of a module.
- Modules stay small.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Spelled in pieces so that this file does not match its own rule.
FORBIDDEN_TEXT = (
    "../" + "shared",
    "shared" + "/design",
    "SCATTERBRAIN" + ".md",
    "MEASUREMENT" + ".md",
    "ARCHITECTURE" + ".md",
    "STYLE" + ".md",
)
ISSUE_CITATION = re.compile(r"\bissue \d+", re.IGNORECASE)

# The layer of every top-level part of the package. sbbench/__init__.py and
# sbbench/__main__.py are the composition root: exempt as importers, and importing the
# root package itself (e.g. ``from sbbench import __version__``) is not an upward import.
LAYERS = {
    "core": 0,
    "attention": 1,
    "kernels": 1,
    "measure": 2,
    "models": 2,
    "tuned": 2,
    "sweep": 3,
    "analyze": 4,
    "study": 4,
    "autotune": 4,
    "cli": 5,
}
COMPOSITION_ROOT = {"sbbench", "sbbench.__main__"}
# What the math (attention/ and kernels/) must never import, whatever the layer numbers.
MATH = ("attention", "kernels")
NOT_FOR_MATH = ("tuned", "measure", "sweep", "analyze", "study", "autotune", "cli")

MAX_MODULE_LINES = 400


# ---------------------------------------------------------------------------------------
# Tracked text
# ---------------------------------------------------------------------------------------

def tracked_files() -> list[Path]:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    result = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True)
    if result.returncode != 0:
        pytest.skip("not a git checkout (the rule is about tracked files)")
    names = [name for name in result.stdout.decode().split("\0") if name]
    return [ROOT / name for name in names if not name.startswith(".git/")]


def read_text(path: Path) -> str | None:
    """The file's text, or None for a binary (a NUL byte, or not UTF-8) or missing file."""
    try:
        data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        return None
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def text_violations(files: list[Path], root: Path = ROOT) -> list[str]:
    found = []
    for path in files:
        text = read_text(path)
        if text is None:
            continue
        relative = path.relative_to(root).as_posix()
        for number, line in enumerate(text.splitlines(), 1):
            for needle in FORBIDDEN_TEXT:
                if needle in line:
                    found.append(f"{relative}:{number}: {needle!r}")
            if path.suffix == ".py":
                for match in ISSUE_CITATION.finditer(line):
                    found.append(f"{relative}:{number}: cites {match.group(0)!r}")
    return found


def test_text_violations_finds_what_it_should(tmp_path):
    """The checker itself: each forbidden string and an issue citation are caught."""
    sample = tmp_path / "sample.py"
    cited = "Issue" + " 12"  # in pieces, like FORBIDDEN_TEXT
    sample.write_text("# see " + FORBIDDEN_TEXT[2] + " 4\n# fixes " + cited + "\nx = 1  # fine\n")
    binary = tmp_path / "data.bin"
    binary.write_bytes(b"\0" + FORBIDDEN_TEXT[0].encode())
    notes = tmp_path / "notes.md"
    notes.write_text("an issue" + " 3 in prose is fine outside code; " + FORBIDDEN_TEXT[0]
                     + "\n")
    found = text_violations([sample, binary, notes], root=tmp_path)
    assert found == ["sample.py:1: " + repr(FORBIDDEN_TEXT[2]),
                     f"sample.py:2: cites {cited!r}",
                     "notes.md:1: " + repr(FORBIDDEN_TEXT[0])]


def test_no_reference_outside_the_repository():
    """No tracked text file refers to notes outside the repository or cites an issue
    number in code (cite docs/architecture.md, docs/measurement.md, docs/algorithm.md)."""
    found = text_violations(tracked_files())
    assert not found, "references to remove:\n" + "\n".join(found)


# ---------------------------------------------------------------------------------------
# Layering
# ---------------------------------------------------------------------------------------

def source_modules() -> dict[str, Path]:
    """Dotted module name -> file for every module of sbbench/ and kernels/ (the latter
    is installed as sbbench.kernels)."""
    modules = {}
    for folder, package in ((ROOT / "sbbench", "sbbench"), (ROOT / "kernels", "sbbench.kernels")):
        for path in sorted(folder.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = path
    return modules


def layer_of(module: str) -> int | None:
    """Layer of a dotted sbbench module name; None for the root and unlayered data."""
    parts = module.split(".")
    if parts[0] != "sbbench" or len(parts) < 2:
        return None
    return LAYERS.get(parts[1])


def part_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "sbbench" and len(parts) > 1 else None


def imported_modules(module: str, path: Path, known: set[str]) -> list[tuple[int, str]]:
    """(line, dotted name) of every sbbench module ``module`` imports, anywhere in it:
    ``import``, ``from ... import`` (relative ones resolved) and
    ``importlib.import_module("...")`` with a constant name."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                # ``from sbbench import tuned`` imports the module sbbench.tuned
                candidate = f"{target}.{alias.name}"
                found.append((node.lineno, candidate if candidate in known else target))
        elif isinstance(node, ast.Call) and _is_import_call(node):
            found.append((node.lineno, node.args[0].value))
    return sorted((line, name) for line, name in found
                  if name == "sbbench" or name.startswith("sbbench."))


def _is_import_call(node: ast.Call) -> bool:
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    return (name in ("import_module", "__import__") and bool(node.args)
            and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str))


def import_edges() -> list[tuple[str, int, str, Path]]:
    """(importer, line, imported, file) for every sbbench import outside the root."""
    modules = source_modules()
    known = set(modules)
    edges = []
    for module, path in modules.items():
        if module in COMPOSITION_ROOT:
            continue
        for line, target in imported_modules(module, path, known):
            edges.append((module, line, target, path))
    return edges


def _where(path: Path, line: int, root: Path = ROOT) -> str:
    return f"{path.relative_to(root).as_posix()}:{line}"


def upward_imports(edges, root: Path = ROOT) -> list[str]:
    found = []
    for module, line, target, path in edges:
        own, theirs = layer_of(module), layer_of(target)
        if own is None:
            found.append(f"{_where(path, line, root)}: {module} is in no layer (add its folder "
                         f"to LAYERS and docs/architecture.md)")
        elif theirs is not None and theirs > own:
            found.append(f"{_where(path, line, root)}: {module} (layer {own}) imports {target} "
                         f"(layer {theirs})")
    return found


def test_layer_checker_resolves_imports(tmp_path):
    """The checker itself: relative, in-function and importlib imports are all seen."""
    package = tmp_path / "sbbench" / "attention"
    package.mkdir(parents=True)
    source = package / "thing.py"
    source.write_text(
        "from ..tuned import table\n"
        "def f():\n"
        "    from sbbench import cli\n"
        "    import importlib\n"
        "    return importlib.import_module('sbbench.sweep.store')\n"
        "from sbbench import __version__\n")
    known = {"sbbench.tuned", "sbbench.tuned.table", "sbbench.cli", "sbbench.sweep.store"}
    names = imported_modules("sbbench.attention.thing", source, known)
    assert names == [(1, "sbbench.tuned.table"), (3, "sbbench.cli"),
                     (5, "sbbench.sweep.store"), (6, "sbbench")]
    found = upward_imports([("sbbench.attention.thing", line, name, source)
                            for line, name in names], root=tmp_path)
    assert len(found) == 3 and all("(layer 1) imports" in f for f in found)


def test_every_module_has_a_layer():
    for module in source_modules():
        assert module in COMPOSITION_ROOT or layer_of(module) is not None, module


def test_imports_point_down_the_layers():
    """core 0; attention, kernels 1; measure, tuned 2; sweep 3; analyze, study,
    autotune 4; cli 5: a module imports from its own layer or below, never above."""
    found = upward_imports(import_edges())
    assert not found, "imports pointing up the layers:\n" + "\n".join(found)


def test_math_imports_no_machinery():
    """attention/ and kernels/ (the math) import nothing from the measuring, tuning,
    sweeping, analysing or command-line parts, not even lazily inside a function."""
    found = [f"{_where(path, line)}: {module} imports {target}"
             for module, line, target, path in import_edges()
             if part_of(module) in MATH and part_of(target) in NOT_FOR_MATH]
    assert not found, "the math layer imports machinery:\n" + "\n".join(found)


# ---------------------------------------------------------------------------------------
# Module size
# ---------------------------------------------------------------------------------------

def test_modules_are_small():
    """No module of sbbench/ or kernels/ exceeds MAX_MODULE_LINES lines: split by job."""
    found = []
    for path in source_modules().values():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_MODULE_LINES:
            found.append(f"{path.relative_to(ROOT).as_posix()}: {lines} lines")
    assert not found, (f"modules over {MAX_MODULE_LINES} lines:\n" + "\n".join(found))


def test_every_package_is_in_the_wheel():
    """An installed sbbench (tox, pip install .) holds only the packages pyproject lists:
    a sub-package missing there imports from a checkout but not from the wheel."""
    import re

    text = (ROOT / "pyproject.toml").read_text()
    listed = set(re.findall(r'"(sbbench(?:\.[a-z_]+)*)"',
                            text[text.index("packages = ["):text.index("]", text.index(
                                "packages = ["))]))
    found = {".".join(p.relative_to(ROOT).parent.parts)
             for p in (ROOT / "sbbench").rglob("__init__.py")}
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
