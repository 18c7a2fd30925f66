"""sbbench: benchmarking and autotuning suite for Scatterbrain attention."""

import os as _os

__version__ = "0.1.0"

# In a source checkout (nothing installed, or `python -m ...` run from the repository
# root, where ./sbbench shadows the installed package) the top-level kernels/ and
# tuning_configs/ folders, packaged as sbbench.kernels and sbbench.tuning_configs, are
# not inside this folder: let the same names resolve from the repository root.
_here = _os.path.dirname(_os.path.abspath(__file__))
_root = _os.path.dirname(_here)
if not _os.path.isdir(_os.path.join(_here, "kernels")) and _os.path.isfile(
        _os.path.join(_root, "kernels", "__init__.py")):
    __path__.append(_root)  # noqa: F821 - the package's own __path__
