"""sbbench: benchmarking and autotuning suite for Scatterbrain attention.

This module is the composition root: it connects the math layer's named settings
(``config="tuned"``, ``ScatterbrainAttention.from_tuned``) to the tuned tables, which sit
a layer above the math and so may not be imported by it. Nothing heavy is imported here.
"""

import os as _os

from sbbench.attention import settings as _settings

__version__ = "0.1.0"


def _resolve_tuned(request):
    from sbbench.tuned.facade import resolve

    return resolve(request)


_settings.config_resolvers.setdefault("tuned", _resolve_tuned)

# In a source checkout the top-level kernels/ and tuning_configs/ folders, packaged as
# sbbench.kernels and sbbench.tuning_configs, are not inside this folder: let the same
# names resolve from this checkout's root. An editable install alone is not enough: run
# from another checkout of the repository (a second clone, a git worktree), ./sbbench
# shadows the installed package but setuptools' editable finder still maps
# sbbench.kernels to the installed checkout, so the tests would exercise the other
# checkout's kernels and read its tuning tables.
_here = _os.path.dirname(_os.path.abspath(__file__))
_root = _os.path.dirname(_here)
if not _os.path.isdir(_os.path.join(_here, "kernels")) and _os.path.isfile(
        _os.path.join(_root, "kernels", "__init__.py")):
    __path__.append(_root)  # noqa: F821 - the package's own __path__
