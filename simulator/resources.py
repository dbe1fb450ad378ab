"""Where ldsim's shipped data lives: hardware profiles, experiments and bundled traces.

From a source checkout (or an editable install) the data sit at the repository's top level
(``hardware_profiles/``, ``experiments/``); a wheel carries copies under
``simulator/_data/``. :func:`data_dir` finds whichever exists, so a non-editable install
works the same as a checkout.
"""

from __future__ import annotations

from pathlib import Path

from simulator.errors import LdsimError

__all__ = ["data_dir", "find_file"]

_PACKAGE_DIR = Path(__file__).resolve().parent


def data_dir(kind: str) -> Path:
    """The folder of shipped ``kind`` data (``hardware_profiles`` or ``experiments``)."""
    for candidate in (_PACKAGE_DIR / "_data" / kind, _PACKAGE_DIR.parent / kind):
        if candidate.is_dir():
            return candidate
    raise LdsimError(
        f"ldsim's shipped '{kind}' folder is missing (looked in {_PACKAGE_DIR / '_data' / kind}"
        f" and {_PACKAGE_DIR.parent / kind}); reinstall ldsim"
    )


def find_file(name: str | Path, kind: str, suffixes: tuple[str, ...] = (".yaml", ".yml")) -> Path | None:
    """Resolve ``name`` as a path, or as the name of a shipped ``kind`` file; ``None`` if absent.

    A bare name such as ``a100-sxm-80gb`` is looked up in :func:`data_dir(kind)
    <data_dir>` with each of ``suffixes``.
    """
    path = Path(name).expanduser()
    if path.is_file():
        return path
    if path.parent == Path(".") or str(path.parent) == kind:
        folder = data_dir(kind)
        for candidate in (folder / path.name, *(folder / (path.name + s) for s in suffixes)):
            if candidate.is_file():
                return candidate
    return None
