"""Copy the README's result figure out of the last book build (no re-computation).

The figure is the output of the cell tagged ``readme-figure`` in the executed chapter 3, so the
README shows exactly what the built book measured. Run after ``bash scripts/build_book.sh``.
"""

import base64
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
EXECUTED = ROOT / "_build" / "jupyter_execute" / "notebooks" / "03-verification.ipynb"
TARGET = ROOT / "book" / "images" / "readme-result.png"


def main() -> int:
    if not EXECUTED.exists():
        print(f"no executed chapter at {EXECUTED}; run bash scripts/build_book.sh first")
        return 1
    nb = nbformat.read(EXECUTED, as_version=4)
    for cell in nb.cells:
        if "readme-figure" in cell.get("metadata", {}).get("tags", []):
            for out in cell.get("outputs", []):
                png = out.get("data", {}).get("image/png")
                if png:
                    TARGET.parent.mkdir(parents=True, exist_ok=True)
                    TARGET.write_bytes(base64.b64decode(png))
                    print(f"wrote {TARGET}")
                    return 0
    print("no PNG output in a cell tagged 'readme-figure'")
    return 1


if __name__ == "__main__":
    sys.exit(main())
