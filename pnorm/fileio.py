"""Files on disk: atomic writes, content digests, downloads and the package's source fingerprint.

Everything ``pnorm`` writes (checkpoints, cached models, vaults, result records) goes through
``atomic_write``, so a crash never leaves a half-written file in place of a good one.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

__all__ = [
    "DataNotFoundError",
    "atomic_torch_save",
    "atomic_write",
    "fetch",
    "sha256_file",
    "source_fingerprint",
    "state_sha256",
    "tensor_digest",
    "tensors_sha256",
]

_PKG_DIR = Path(__file__).resolve().parent
# Modules that cannot change a trained model (attacks and figures run after training; a
# profile's training knobs enter the cache key as values). Every other module is fingerprinted.
_NOT_TRAINING = frozenset({"__init__.py", "attacks.py", "erb.py", "forgery.py",
                           "neuron_transforms.py", "plots.py", "profiles.py", "results.py",
                           "timing.py", "widgets.py"})


class DataNotFoundError(FileNotFoundError):
    """A dataset is missing or corrupt on disk; the message names the folder and how to get it.

    Raised instead of ever falling back silently to synthetic data.
    """


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` through a temp file in the same folder, then rename it into place.

    The folder is created if needed; on any error the temp file is removed and ``path`` keeps
    its previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _remove_stale_temps(path: Path, older_than_s: float = 600.0) -> None:
    """Delete temp files of earlier writes of ``path`` that a killed process left behind.

    Only files untouched for ``older_than_s`` seconds go, so a live writer keeps its own.
    """
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        try:
            if time.time() - tmp.stat().st_mtime > older_than_s:
                tmp.unlink()
        except FileNotFoundError:  # another process removed it first
            pass


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through ``atomic_write``: a crash never leaves a half-written file."""
    atomic_write(path, lambda f: torch.save(obj, f))


def tensor_digest(*tensors: torch.Tensor) -> str:
    """SHA-256 (hex) of the tensors' raw bytes, in order: a content key for data and caches."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def tensors_sha256(meta_json: str, tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over a JSON header and named tensors (names, dtypes, shapes, bytes; sorted)."""
    h = hashlib.sha256(meta_json.encode())
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def state_sha256(module_or_state: nn.Module | dict[str, torch.Tensor]) -> str:
    """SHA-256 over a state dict's names, dtypes, shapes and bytes (order-independent)."""
    state = (
        module_or_state.state_dict() if isinstance(module_or_state, nn.Module) else module_or_state
    )
    return tensors_sha256("", state)


def sha256_file(path: str | Path) -> str:
    """SHA-256 (hex) of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(url: str, dest: Path) -> None:
    """Copy ``url`` (http(s) or file) to ``dest``."""
    with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as f:
        shutil.copyfileobj(response, f, 1 << 20)


def source_fingerprint() -> str:
    """SHA-256 of the ``pnorm/*.py`` files that training depends on: part of each cache key."""
    h = hashlib.sha256()
    for path in sorted(p for p in _PKG_DIR.glob("*.py") if p.name not in _NOT_TRAINING):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()
