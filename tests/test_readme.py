"""The README's "Using pnorm directly" example runs as printed (one epoch instead of thirty)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def _example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Using `pnorm` directly", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README's 'Using pnorm directly' section has no python block"
    return match.group(1)


def test_readme_example_runs(tmp_path, monkeypatch) -> None:
    code = _example()
    assert "epochs=30" in code, "the test shortens the README's training; keep `epochs=30` in it"
    code = code.replace("epochs=30", "epochs=1").replace("n_train=2000", "n_train=256")
    code = code.replace("n_val=500", "n_val=64").replace("n_test=1000", "n_test=128")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - our own README
    report = namespace["report"]
    assert report.detection["bits"] > 0
    assert (tmp_path / "release.pt").is_file() and (tmp_path / "vault.pt").is_file()
