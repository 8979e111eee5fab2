"""environment.yml (conda / Binder) stays consistent with pyproject.toml and scripts/setup.sh."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def env() -> dict:
    data = yaml.safe_load((REPO_ROOT / "environment.yml").read_text(encoding="utf-8"))
    assert isinstance(data, dict), "environment.yml must be a mapping"
    return data


@pytest.fixture(scope="module")
def pip_block(env: dict) -> list[str]:
    blocks = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(blocks) == 1, f"expected exactly one pip: block, found {len(blocks)}"
    assert all(isinstance(x, str) for x in blocks[0])
    return blocks[0]


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_top_level_keys(env: dict) -> None:
    assert env.get("name") == "pnorm-book"
    assert "conda-forge" in env.get("channels", [])
    assert isinstance(env.get("dependencies"), list) and env["dependencies"]


def test_python_is_pinned_and_pip_listed(env: dict, pyproject: dict) -> None:
    conda_deps = [d for d in env["dependencies"] if isinstance(d, str)]
    pythons = [d for d in conda_deps if re.match(r"python\b", d)]
    assert len(pythons) == 1, f"expected one python entry, got {pythons}"
    m = re.fullmatch(r"python\s*=+\s*(\d+)\.(\d+)(\.\*)?", pythons[0])
    assert m, f"python must be pinned to a minor version, got {pythons[0]!r}"
    pinned = (int(m.group(1)), int(m.group(2)))
    floor = re.search(r">=\s*(\d+)\.(\d+)", pyproject["project"]["requires-python"])
    assert floor and pinned >= (int(floor.group(1)), int(floor.group(2))), (
        f"python {pinned} is below requires-python {pyproject['project']['requires-python']}"
    )
    assert "pip" in conda_deps, "pip must be a conda dependency when a pip: block is used"


def test_editable_install_extras_exist(pip_block: list[str], pyproject: dict) -> None:
    editable = [x for x in pip_block if re.match(r"-e\s+\.", x)]
    assert len(editable) == 1, f"expected one `-e .[...]` line in the pip block, got {editable}"
    m = re.fullmatch(r"-e\s+\.(?:\[([^\]]*)\])?", editable[0].strip())
    assert m, f"cannot parse {editable[0]!r}"
    extras = [e.strip() for e in (m.group(1) or "").split(",") if e.strip()]
    known = pyproject["project"].get("optional-dependencies", {})
    assert extras, "the editable install should name the book and test extras"
    unknown = [e for e in extras if e not in known]
    assert not unknown, f"extras {unknown} are not in pyproject.toml (known: {sorted(known)})"
    assert {"book", "test"} <= set(extras)


def test_torch_pins_match_setup_script(pip_block: list[str]) -> None:
    """environment.yml and scripts/setup.sh install the same torch/torchvision."""
    setup = (REPO_ROOT / "scripts" / "setup.sh").read_text(encoding="utf-8")
    m = re.search(r'^DEFAULT_TORCH_SPEC="([^"]+)"', setup, flags=re.M)
    assert m, "DEFAULT_TORCH_SPEC not found in scripts/setup.sh"
    pins = [x for x in pip_block if re.match(r"torch(vision)?\s*==", x)]
    assert sorted(pins) == sorted(m.group(1).split()), (
        f"environment.yml pins {pins} but setup.sh installs {m.group(1)!r}"
    )
