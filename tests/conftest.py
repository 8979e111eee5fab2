"""Shared fixtures for the notebook and book tests.

``pnorm_cache_dir`` gives the whole test session one ``PNORM_CACHE`` directory and the
``smoke`` profile, so models trained by one notebook run are reused by later runs and by the
book build.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (where ``_config.yml`` and ``_toc.yml`` live)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def pnorm_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One fresh, session-wide ``PNORM_CACHE`` and ``PNORM_PROFILE=smoke``.

    Both variables are set in ``os.environ`` (so kernels and subprocesses inherit them) for
    the rest of the session and restored when the session ends.
    """
    cache = tmp_path_factory.mktemp("pnorm-cache")
    saved = {key: os.environ.get(key) for key in ("PNORM_CACHE", "PNORM_PROFILE")}
    os.environ["PNORM_CACHE"] = str(cache)
    os.environ["PNORM_PROFILE"] = "smoke"
    try:
        yield cache
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
