"""The book's results store: each chapter writes its headline measurements for the summary.

A chapter calls ``record_results("05-pruning", profile, rows)``; the summary chapter reads them
all back with ``load_results(profile)``. Files live in ``<PNORM_CACHE>/results/<profile>/`` and
carry the profile, the data source and the ``pnorm`` source fingerprint, so a summary never
mixes numbers from another profile or from older code without saying so.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from .fileio import atomic_write, source_fingerprint
from .profiles import Profile, cache_dir

__all__ = ["UNITS", "load_results", "record_results", "recorded_value", "results_dir"]

_FORMAT = "pnorm-results/1"
UNITS = ("fraction", "points", "ratio", "verdict", "count")
"""How a row's value reads: a share (0.52 = 52 %), a difference of shares in percentage points,
a plain ratio, a yes/no verdict (1.0 / 0.0) or a count."""


def results_dir(profile: Profile) -> Path:
    """``<PNORM_CACHE>/results/<profile name>``: where chapters leave their result records."""
    return cache_dir() / "results" / profile.name


def _plain(value: Any) -> Any:
    """JSON-safe copy: numbers stay numbers (NaN becomes None), tuples become lists."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"result values must be numbers, strings or lists/dicts of them, got "
                    f"{type(value).__name__}: {value!r}")


def record_results(chapter: str, profile: Profile, rows: list[dict[str, Any]],
                   data: str | None = None) -> Path:
    """Write ``rows`` (a list of flat dicts) as this chapter's records, atomically.

    ``data`` names what the numbers were measured on (e.g. "synthetic shapes"); the profile
    name, device and the source fingerprint are added, so the summary can label every row.
    Each row needs ``claim``, ``quantity``, ``value`` and a ``unit`` from ``UNITS``.
    """
    for row in rows:
        missing = {"claim", "quantity", "value", "unit"} - set(row)
        if missing:
            raise ValueError(f"result row {row} lacks {sorted(missing)}")
        if row["unit"] not in UNITS:
            raise ValueError(f"result row {row['quantity']!r}: unit must be one of {UNITS}, "
                             f"got {row['unit']!r}")

    payload = {
        "format": _FORMAT, "chapter": chapter, "profile": profile.name,
        "device": profile.device, "data": data or profile.data,
        "source": source_fingerprint(), "written": time.strftime("%Y-%m-%d %H:%M:%S"),
        "rows": _plain(rows),
    }
    path = results_dir(profile) / f"{chapter}.json"
    text = json.dumps(payload, indent=1, sort_keys=True)
    atomic_write(path, lambda f: f.write(text.encode()))
    return path


def load_results(profile: Profile) -> dict[str, dict[str, Any]]:
    """Every chapter's records for ``profile``, by chapter name (sorted).

    Each value is the stored payload plus ``stale``: True when it was written by a different
    ``pnorm`` source than the one running now. Unreadable files raise ``ValueError`` naming
    the file (delete it and rerun its chapter).
    """
    current = source_fingerprint()
    out = {}
    for path in sorted(results_dir(profile).glob("*.json")):
        try:
            payload = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"result file {path} is unreadable ({err}); delete it and rerun "
                             "its chapter") from err
        if payload.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a pnorm result file; delete it and rerun its chapter")
        payload["stale"] = payload.get("source") != current
        out[payload["chapter"]] = payload
    return out


def recorded_value(records: dict[str, dict[str, Any]], chapter: str, quantity: str,
                   prefix: bool = False) -> Any:
    """The value ``chapter`` recorded for ``quantity`` in ``load_results``'s output, or None.

    With ``prefix`` the first quantity that starts with ``quantity`` matches (for names that
    carry a profile's number, e.g. "PAN: lowest detection over 8 epochs").
    """
    rows = records.get(chapter, {}).get("rows", [])
    return next((r["value"] for r in rows if (r["quantity"].startswith(quantity) if prefix
                                               else r["quantity"] == quantity)), None)
