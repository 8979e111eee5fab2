"""Execute a chapter notebook with nbclient and fail the test with one clean message."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

NB_DIR = Path(__file__).resolve().parent.parent / "notebooks"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def execute_or_fail(nb, what: str, timeout: int, kernel_name: str = "python3",
                    cwd: Path = NB_DIR) -> None:
    """Run every cell of ``nb`` in place (kernel working directory ``cwd``); on an error,
    timeout or dead kernel, fail the calling test naming ``what`` and the cell."""
    client = NotebookClient(nb, timeout=timeout, kernel_name=kernel_name,
                            resources={"metadata": {"path": str(cwd)}})
    failure = None
    try:
        client.execute()
    except CellExecutionError as exc:
        failure = f"a cell raised\n{exc}"
    except CellTimeoutError as exc:
        failure = f"a cell ran longer than {timeout} s\n{exc}"
    except DeadKernelError as exc:
        failure = f"the kernel died (out of memory?)\n{exc}"
    if failure is not None:  # outside the except block: one clean traceback, no chained ones
        pytest.fail(f"{what}: {ANSI.sub('', failure)}", pytrace=False)
