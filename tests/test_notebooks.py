"""The chapter notebooks: committed clean, all in the table of contents, and they run.

Each ``notebooks/*.ipynb`` is executed top to bottom with nbclient in the ``smoke`` profile,
kernel working directory ``notebooks/``, sharing one ``PNORM_CACHE`` for the whole session
(``pnorm_cache_dir`` in ``conftest.py``), so models trained here are reused by later notebooks
and by the book build in ``test_book.py``.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import nbformat
import pytest
import yaml
from nbrun import execute_or_fail

REPO_ROOT = Path(__file__).resolve().parent.parent
NB_DIR = REPO_ROOT / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 600
KERNEL_NAME = "python3"


def _toc_files() -> list[str]:
    """Every ``file:`` (and the root) of ``_toc.yml``, as written (no suffix)."""
    toc = yaml.safe_load((REPO_ROOT / "_toc.yml").read_text(encoding="utf-8"))
    files = [toc["root"]]

    def walk(entries: list[dict]) -> None:
        for entry in entries or []:
            if "file" in entry:
                files.append(str(Path(entry["file"]).with_suffix("")))
            for key in ("sections", "chapters", "parts"):
                walk(entry.get(key, []))

    for key in ("chapters", "parts", "sections"):
        walk(toc.get(key, []))
    return files


def test_there_are_notebooks() -> None:
    assert NOTEBOOKS, f"no notebooks found in {NB_DIR}"


def test_notebooks_and_toc_agree() -> None:
    toc = _toc_files()
    in_toc = {f for f in toc if f.startswith("notebooks/")}
    on_disk = {f"notebooks/{p.stem}" for p in NOTEBOOKS}
    assert on_disk - in_toc == set(), f"notebooks missing from _toc.yml: {sorted(on_disk - in_toc)}"
    assert in_toc - on_disk == set(), (
        f"_toc.yml entries without a notebook: {sorted(in_toc - on_disk)}"
    )
    missing = [
        f
        for f in toc
        if not any((REPO_ROOT / f).with_suffix(s).exists() for s in (".md", ".ipynb"))
    ]
    assert not missing, f"_toc.yml entries with no .md/.ipynb file: {missing}"
    assert len(toc) == len(set(toc)), f"duplicate entries in _toc.yml: {toc}"


FOLDED = ("hide-input", "remove-input", "remove-cell")
DRAWING = ("plt.", "plots.fig_png(", "render_frames(", "ax.")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_follows_the_presentation_convention(path: Path) -> None:
    """README, "Writing a chapter": figure-drawing code is folded, the imports are
    folded, and the visible setup is one ``parameters`` cell of settings."""
    nb = nbformat.read(path, as_version=4)
    code = [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    visible = [(i, c) for i, c in code if not set(c.metadata.get("tags", [])) & set(FOLDED)]
    drawing = [i for i, c in visible if any(d in c.source for d in DRAWING)]
    assert not drawing, (f"{path.name}: code cells {drawing} draw a figure in view; "
                         "tag them hide-input (or move the code into pnorm.plots)")
    params = [c for _, c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, f"{path.name}: expected one cell tagged 'parameters'"
    assert "import " not in params[0].source, (
        f"{path.name}: the parameters cell imports; move imports into the folded cell above it")


VISIBLE_CODE_BUDGET = 470  # non-blank lines a reader sees across all pages (about 1,400 once)


def test_visible_code_stays_within_the_budget() -> None:
    """The pages show results and the code that teaches PAN, not walls of code."""
    per_page = {}
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        per_page[path.stem] = sum(
            sum(1 for line in cell.source.splitlines() if line.strip())
            for cell in nb.cells
            if cell.cell_type == "code" and not set(cell.metadata.get("tags", [])) & set(FOLDED))
    total = sum(per_page.values())
    assert total <= VISIBLE_CODE_BUDGET, (
        f"{total} visible code lines (budget {VISIBLE_CODE_BUDGET}): {per_page}; fold drawing "
        f"and formatting code (hide-input) or move it into pnorm.plots")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_clean(path: Path) -> None:
    """No outputs, no execution counts, no saved widget state: the book build executes them."""
    nb = nbformat.read(path, as_version=4)
    dirty = [
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code"
        and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]
    assert not dirty, (
        f"{path.name}: code cells {dirty} have outputs or execution counts; clear them, e.g. "
        f"`jupyter nbconvert --clear-output --inplace {path.relative_to(REPO_ROOT)}`"
    )
    assert "widgets" not in nb.metadata, f"{path.name}: saved widget state in the notebook metadata"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_uses_python3_kernel(path: Path) -> None:
    """The book build starts the kernel named in the notebook; it must be the venv's python3."""
    nb = nbformat.read(path, as_version=4)
    name = nb.metadata.get("kernelspec", {}).get("name")
    assert name == KERNEL_NAME, f"{path.name}: kernelspec name {name!r}, expected {KERNEL_NAME!r}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_smoke_profile(path: Path, pnorm_cache_dir: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs, and what it shows is readable: marks in tables, no text too small in a figure."""
    monkeypatch.setenv("PNORM_CHECK_FIGURES", "1")  # plots.use_style reports small text
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    execute_or_fail(nb, path.name, CELL_TIMEOUT_S, KERNEL_NAME)
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    tables = ["".join(o.get("data", {}).get("text/html", "")) for o in outputs]
    assert not [t for t in tables if re.search(r">\s*(True|False)\s*<", t)], (
        f"{path.name}: a table shows True/False; show ✓/✗ with plots.marks")
    small = [line for o in outputs for line in "".join(o.get("text", "")).splitlines()
             if line.startswith("[pnorm figure check]")]
    assert not small, f"{path.name}: figure text too small at book width:\n" + "\n".join(small)
    print(
        f"\n[test_notebooks] {path.name} ran in {time.perf_counter() - start:.1f} s "
        f"(PNORM_CACHE={pnorm_cache_dir})"
    )
    RAN.add(path.stem)


RAN: set[str] = set()  # notebooks executed in this session, in file order


def test_every_chapter_records_results_for_the_summary(pnorm_cache_dir: Path) -> None:
    """Chapters 02-08 leave result records that the summary chapter (09) reads, none stale."""
    from pnorm.profiles import PROFILES
    from pnorm.results import load_results

    writers = {p.stem for p in NOTEBOOKS if "record_results(" in p.read_text()}
    assert {f"0{i}" for i in range(2, 9)} <= {w[:2] for w in writers}
    if not writers <= RAN:
        pytest.skip("runs after the smoke runs of all recording chapters in the same session")
    records = load_results(PROFILES["smoke"])
    assert writers <= set(records), f"no records from {sorted(writers - set(records))}"
    assert not any(records[w]["stale"] for w in writers)
    assert all(records[w]["rows"] for w in writers)
