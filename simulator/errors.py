"""User-facing errors.

Everything a user can get wrong (a YAML key, a file, a policy name, a plug-in that does not
import) raises :class:`LdsimError` with a one-paragraph message that names the place (file, key
path, column) and what was expected. The CLI prints the message without a traceback and exits
with status 2; any other exception is a bug in ldsim and keeps its traceback.
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["ConfigError", "LdsimError", "did_you_mean", "validation_message"]


class LdsimError(Exception):
    """An error caused by the user's input, reported without a traceback (exit status 2)."""


class ConfigError(LdsimError):
    """An experiment, profile or plug-in configuration that is malformed or inconsistent."""


def did_you_mean(word: str, choices: Iterable[str], known_label: str = "known") -> str:
    """The tail of an "unknown name" message: a suggestion for the closest of ``choices``
    (when one is close) and the list of valid names.

    ``"; did you mean 'fcfs'? known: edf, fcfs"``, or ``"; known: edf, fcfs"`` without a
    close match; ``known_label=""`` leaves the list out.
    """
    options = list(choices)
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    listing = f"{known_label}: {', '.join(options)}" if known_label and options else ""
    if close:
        return f"; did you mean '{close[0]}'?" + (f" {listing}" if listing else "")
    return f"; {listing}" if listing else ""


def _unwrap(annotation: Any) -> list[Any]:
    """The candidate types inside ``annotation`` (Optional, Union, list, dict values)."""
    origin = typing.get_origin(annotation)
    if origin is None:
        return [annotation]
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    out: list[Any] = []
    args = typing.get_args(annotation)
    if origin in (list, tuple, set, frozenset, dict) or str(origin).endswith(("Sequence", "Mapping")):
        args = args[-1:] if origin is dict or str(origin).endswith("Mapping") else args[:1]
    for arg in args:
        out.extend(_unwrap(arg))
    return out


def _fields_at(root: Any, loc: Sequence[Any]) -> list[str]:
    """The field names of the pydantic model found by walking ``loc`` from ``root``."""
    candidates = [root]
    for part in loc:
        nxt: list[Any] = []
        for cand in candidates:
            fields = getattr(cand, "model_fields", None)
            if fields is not None and isinstance(part, str) and part in fields:
                nxt.extend(_unwrap(fields[part].annotation))
            elif fields is not None:
                nxt.append(cand)  # a list index or dict key into a container already unwrapped
        candidates = [c for c in nxt if c is not None]
    for cand in candidates:
        fields = getattr(cand, "model_fields", None)
        if fields:
            return [name for name, f in fields.items() if not f.exclude]
    return []


def validation_message(
    exc: Any, source: str, root: Any, prefix: Sequence[Any] = (), extra_keys: Sequence[str] = ()
) -> str:
    """One readable paragraph for a pydantic ``ValidationError``.

    Each problem is named as ``source: key.path: what was expected (got value)``; an unknown
    key gets a did-you-mean from the valid keys at that place. ``prefix`` is prepended to the
    key path (the location of ``root`` inside a larger document); ``extra_keys`` are valid
    keys at the top of ``root`` that it does not itself declare (a policy's ``policy`` key).
    """
    lines = []
    for err in exc.errors():
        loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
        path = ".".join(str(p) for p in (*prefix, *loc)) or "(top level)"
        if err["type"] == "extra_forbidden":
            valid = _fields_at(root, loc[:-1]) + (list(extra_keys) if len(loc) == 1 else [])
            key = str(loc[-1])
            lines.append(f"{source}: {path}: unknown key{did_you_mean(key, valid, 'known keys here')}")
        elif err["type"] == "missing":
            lines.append(f"{source}: {path}: required key is missing")
        else:
            got = err.get("input")
            shown = repr(got) if not isinstance(got, dict) else "a mapping"
            msg = err["msg"].removeprefix("Value error, ")
            if msg.startswith("Input should be a valid dictionary"):
                msg = "expected a mapping"  # don't leak the internal class name
            lines.append(f"{source}: {path}: {msg} (got {shown})")
    return "\n".join(lines)
