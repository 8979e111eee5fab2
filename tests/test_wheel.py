"""Colab parity: the installed wheel, not the repository, runs a chapter.

On Colab a chapter's first cell installs ``pnorm-book`` and runs with no repository around it.
This test builds the wheel of the distribution, installs it (``--no-deps``) into a fresh virtual
environment outside the repository, lends that environment the project venv's third-party
packages through a plain path entry (a ``.pth`` line; plain path entries are not scanned for
``.pth`` hooks, so the project's editable ``pnorm`` stays out), registers a kernel for it in a
temporary ``JUPYTER_PATH``, and runs chapter 1 from a temporary folder in the smoke profile with
a fresh ``PNORM_CACHE``. A first cell, run by the test's client only, asserts that ``pnorm``
was imported from the new environment. Offline: pip builds with the venv's setuptools.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import nbformat
import pytest
from nbrun import execute_or_fail

REPO_ROOT = Path(__file__).resolve().parent.parent
CHAPTER = REPO_ROOT / "notebooks" / "01-anatomy.ipynb"
# Not part of a build: the virtual environment, build outputs, caches, vendored JavaScript.
_NOT_SOURCE = (".git", ".venv", "_build", "build", "dist", "*.egg-info", "__pycache__",
               ".pytest_cache", ".ruff_cache", ".ipynb_checkpoints", "node_modules", "vendor")


def _run(cmd: list[str], **kwargs) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, **kwargs)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of ``pnorm-book``, built offline from a copy of the source tree (a build in
    place would leave ``build/`` and ``*.egg-info`` in the repository)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(REPO_ROOT, src, ignore=shutil.ignore_patterns(*_NOT_SOURCE))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
          "-w", str(tmp / "dist"), str(src)])
    (found,) = (tmp / "dist").glob("pnorm_book-*.whl")
    return found


def test_wheel_holds_every_pnorm_module(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    packaged = {n.removeprefix("pnorm/") for n in names if n.startswith("pnorm/")}
    source = {p.name for p in (REPO_ROOT / "pnorm").glob("*.py")}
    assert packaged == source, (f"missing from the wheel: {sorted(source - packaged)}; "
                                f"only in the wheel: {sorted(packaged - source)}")
    assert not [n for n in names if n.split("/")[0] in ("tests", "notebooks", "book")]


def test_wheel_runs_chapter_one_outside_the_repository(
        wheel: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    start = time.perf_counter()
    env = tmp_path / "env"
    _run([sys.executable, "-m", "venv", "--without-pip", str(env)])
    python = env / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
          "--no-index", str(wheel)])
    purelib = Path(_run([str(python), "-c",
                         "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip())
    # the project venv's packages (torch, ipykernel, matplotlib, …) as one plain path entry
    (purelib / "project-venv-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    kernels = tmp_path / "jupyter" / "kernels" / "pnorm-wheel"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "pnorm from the wheel", "language": "python"}))
    work = tmp_path / "reader"
    work.mkdir()
    shutil.copy(CHAPTER, work / CHAPTER.name)

    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("PNORM_PROFILE", "smoke")
    monkeypatch.setenv("PNORM_CACHE", str(tmp_path / "cache"))
    for var in ("PYTHONPATH", "PNORM_DATA", "PNORM_DEVICE"):
        monkeypatch.delenv(var, raising=False)

    nb = nbformat.read(work / CHAPTER.name, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell("\n".join([
        "import os, sys, pathlib",
        "import pnorm",
        "_where = pathlib.Path(pnorm.__file__).resolve()",
        f"_env, _repo = pathlib.Path({str(env.resolve())!r}), pathlib.Path({str(REPO_ROOT)!r})",
        "assert pathlib.Path(sys.prefix).resolve() == _env, sys.prefix",
        "assert _where.is_relative_to(_env), f'pnorm imported from {_where}, not the wheel'",
        "assert not _where.is_relative_to(_repo) and not pathlib.Path.cwd().is_relative_to(_repo)",
        "print('pnorm from', _where)"])))
    execute_or_fail(nb, f"{CHAPTER.name} from the wheel", 600, "pnorm-wheel", work)
    where = "".join(o.get("text", "") for o in nb.cells[0].outputs)
    assert str(env.resolve()) in where
    assert any("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
               for o in c.outputs), "chapter 1 drew no figure"
    print(f"\n[test_wheel] {where.strip()}; chapter 1 ran in {time.perf_counter() - start:.1f} s")
