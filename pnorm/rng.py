"""Seeded randomness helpers shared by the data generators and the training loop.

Every random draw in ``pnorm`` goes through a ``torch.Generator`` seeded from an explicit value;
these helpers derive stable sub-seeds and keep generator-heavy rendering on one thread.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["derive_seed", "one_thread", "uniform"]


def derive_seed(seed: int, *parts: str) -> int:
    """A stable 63-bit seed from `seed` and labels (Python's `hash` is salted per process)."""
    digest = hashlib.blake2b(f"{seed}/{'/'.join(parts)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


@contextmanager
def one_thread() -> Iterator[None]:
    """Render on one intra-op thread, then restore the previous thread count.

    Rendering is many small memory-bound ops: on a busy 2-core machine, two threads made 8,000
    shapes take 18 s instead of 1.2 s on one (results are bit-identical either way).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)



def uniform(g: torch.Generator, lo: float, hi: float, *shape: int) -> torch.Tensor:
    """Uniform draws in [lo, hi) from ``g``."""
    return lo + (hi - lo) * torch.rand(*shape, generator=g)
