"""Tests of pnorm.points: the ModelNet40 loader on tiny files, augmentation and the container.

The loader and the download path run on files written in the exact
``modelnet40_normal_resampled`` layout, since these machines cannot download ModelNet40.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest
import torch
from ondisk import write_modelnet

from pnorm import points
from pnorm.fileio import DataNotFoundError
from pnorm.points import (
    MODELNET40_FOLDER,
    PointData,
    augment_points,
    download_modelnet40,
    load_modelnet40,
    normalize_clouds,
)
from pnorm.synthetic_points import synthetic_points

# Shape-name order is deliberately not alphabetical: labels must follow the file's order.
CLASSES = ["table", "airplane", "flower_pot"]
TRAIN = {"table": 3, "airplane": 2, "flower_pot": 2}
TEST = {"table": 1, "airplane": 1, "flower_pot": 1}
ROWS = 40


def _cloud(shape_id: str) -> torch.Tensor:
    """ROWS×6 rows (xyz far from the origin, at an odd scale, plus unit normals) per shape."""
    g = torch.Generator().manual_seed(int(hashlib.md5(shape_id.encode()).hexdigest()[:8], 16))
    xyz = 3.0 * torch.randn(ROWS, 3, generator=g) + torch.tensor([5.0, -2.0, 7.0])
    normals = torch.nn.functional.normalize(torch.randn(ROWS, 3, generator=g), dim=1)
    return torch.cat([xyz, normals], 1)


def _write_modelnet(root: Path, short: str | None = None) -> Path:
    """A tiny dataset in the modelnet40_normal_resampled layout; returns its folder."""
    ids, index = {}, 1
    for split, counts in (("train", TRAIN), ("test", TEST)):
        ids[split] = []
        for cls, k in counts.items():
            for _ in range(k):
                ids[split].append(f"{cls}_{index:04d}")
                index += 1
    return write_modelnet(root, CLASSES, ids,
                          lambda shape_id: _cloud(shape_id)[: 5 if shape_id == short else ROWS])


def _expected(shape_id: str, n: int) -> torch.Tensor:
    xyz = torch.tensor([[float(f"{v:.6f}") for v in r] for r in _cloud(shape_id)[:, :3].tolist()])
    return normalize_clouds(xyz[torch.arange(n) % len(xyz)].T)


def _all_ids(folder: Path, split: str) -> list[str]:
    return (folder / f"modelnet40_{split}.txt").read_text().split()


# ------------------------------------------------------------------ ModelNet40 loader


def test_modelnet_loader_reads_the_layout(tmp_path: Path) -> None:
    folder = _write_modelnet(tmp_path)
    sp = load_modelnet40(tmp_path, n_points=16, n_val=2, seed=0)
    assert sp.source == "real" and sp.num_classes == 3 and sp.train.classes == CLASSES
    assert (len(sp.train), len(sp.val), len(sp.test)) == (5, 2, 3)
    assert sp.test.points.shape == (3, 3, 16) and sp.test.points.dtype == torch.float32
    assert [sp.train.name, sp.val.name, sp.test.name] == [
        "modelnet40/train", "modelnet40/val", "modelnet40/test"]
    # Labels follow the shape-name file (flower_pot keeps its underscore); test list order kept.
    test_ids = _all_ids(folder, "test")
    assert sp.test.labels.tolist() == [CLASSES.index(i.rsplit("_", 1)[0]) for i in test_ids]
    # First-N sampling, centred, farthest point on the unit sphere (fp16 cache: ~1e-3).
    for k, shape_id in enumerate(test_ids):
        torch.testing.assert_close(sp.test.points[k], _expected(shape_id, 16), atol=2e-3, rtol=0)
    pts = torch.cat([sp.train.points, sp.val.points, sp.test.points])
    assert pts.mean(2).abs().max() < 2e-3
    assert (pts.norm(dim=1).amax(1) - 1).abs().max() < 2e-3
    # Train and val partition the train list (seeded), each label from the list.
    train_labels = sorted(sp.train.labels.tolist() + sp.val.labels.tolist())
    assert train_labels == sorted(CLASSES.index(i.rsplit("_", 1)[0])
                                  for i in _all_ids(folder, "train"))
    again = load_modelnet40(tmp_path, n_points=16, n_val=2, seed=0)
    assert torch.equal(again.val.points, sp.val.points)
    other = load_modelnet40(tmp_path, n_points=16, n_val=2, seed=1)
    assert not torch.equal(other.val.labels, sp.val.labels) or not torch.equal(
        other.val.points, sp.val.points)
    with pytest.raises(ValueError, match="n_val"):
        load_modelnet40(tmp_path, n_points=16, n_val=7)


def test_modelnet_random_sampling_is_seeded(tmp_path: Path) -> None:
    _write_modelnet(tmp_path, short="airplane_0004")
    first = load_modelnet40(tmp_path, n_points=ROWS, n_val=0)
    a = load_modelnet40(tmp_path, n_points=ROWS, n_val=0, sampling="random", seed=3)
    b = load_modelnet40(tmp_path, n_points=ROWS, n_val=0, sampling="random", seed=3,
                        cache_dir=tmp_path / "other-cache")
    c = load_modelnet40(tmp_path, n_points=ROWS, n_val=0, sampling="random", seed=4)
    assert torch.equal(a.test.points, b.test.points)  # same seed, fresh cache: same points
    assert not torch.equal(a.test.points, c.test.points)
    # All rows drawn: a permutation of the same cloud.
    for k in range(len(a.test)):
        key = first.test.points[k, 0].sort().values
        torch.testing.assert_close(a.test.points[k, 0].sort().values, key)
    # A file shorter than n_points is cycled (first) or drawn with replacement (random).
    short = [i for i, s in enumerate(points._read_lines(
        tmp_path / MODELNET40_FOLDER / "modelnet40_train.txt")) if s == "airplane_0004"][0]
    torch.testing.assert_close(first.train.points[short, :, 5], first.train.points[short, :, 0])
    assert a.train.points[short].unique(dim=1).shape[1] <= 5
    with pytest.raises(ValueError, match="sampling"):
        load_modelnet40(tmp_path, sampling="fps")  # type: ignore[arg-type]


def test_modelnet_cache_is_reused_and_rebuilt_when_damaged(tmp_path: Path, monkeypatch) -> None:
    _write_modelnet(tmp_path)
    cache = tmp_path / "cache"
    sp = load_modelnet40(tmp_path, n_points=8, n_val=1, cache_dir=cache)
    files = sorted(p.name for p in cache.iterdir())
    assert files == ["test-8pts-first.pt", "train-8pts-first.pt"]

    def no_reading(*_args, **_kw):
        raise AssertionError("the cache should have been used")

    with monkeypatch.context() as m:  # a second load never opens a text file
        m.setattr(points, "_read_cloud", no_reading)
        again = load_modelnet40(tmp_path, n_points=8, n_val=1, cache_dir=cache)
    assert torch.equal(again.test.points, sp.test.points)

    path = cache / "test-8pts-first.pt"
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.warns(UserWarning, match="rebuilding"):
        rebuilt = load_modelnet40(tmp_path, n_points=8, n_val=1, cache_dir=cache)
    assert torch.equal(rebuilt.test.points, sp.test.points)

    obj = torch.load(path, weights_only=True)  # tampered values, valid file
    obj["points"][0, 0, 0] += 1
    torch.save(obj, path)
    with pytest.warns(UserWarning, match="SHA-256"):
        rebuilt = load_modelnet40(tmp_path, n_points=8, n_val=1, cache_dir=cache)
    assert torch.equal(rebuilt.test.points, sp.test.points)
    assert not list(cache.glob(".*.tmp"))  # atomic writes leave no temp files

    # A changed file listing invalidates the cache.
    listing = tmp_path / MODELNET40_FOLDER / "modelnet40_test.txt"
    listing.write_text("\n".join(listing.read_text().split()[:2]) + "\n")
    with pytest.warns(UserWarning, match="other settings"):
        assert len(load_modelnet40(tmp_path, n_points=8, n_val=1, cache_dir=cache).test) == 2


def test_modelnet_missing_data_is_a_clear_error(tmp_path: Path) -> None:
    assert points.DataNotFoundError is DataNotFoundError  # one error type for every loader
    with pytest.raises(DataNotFoundError, match="does not exist") as err:
        load_modelnet40(tmp_path / "nowhere")
    msg = str(err.value)
    assert str(tmp_path / "nowhere" / MODELNET40_FOLDER) in msg
    assert "download_modelnet40" in msg and "PNORM_DATA=synthetic" in msg
    folder = _write_modelnet(tmp_path)
    (folder / "modelnet40_test.txt").unlink()
    with pytest.raises(DataNotFoundError, match="modelnet40_test.txt"):
        load_modelnet40(tmp_path)
    folder.rename(tmp_path / "x")
    _write_modelnet(tmp_path)
    (folder / "table" / "table_0001.txt").unlink()
    with pytest.raises(DataNotFoundError, match="table_0001.txt is missing"):
        load_modelnet40(tmp_path / MODELNET40_FOLDER)  # the folder itself also works as root
    (folder / "modelnet40_train.txt").write_text("chair_0001\n")
    with pytest.raises(DataNotFoundError, match="'chair' is not in"):
        load_modelnet40(tmp_path)
    (folder / "modelnet40_train.txt").write_text("table_0002\n")
    for text, msg in (("1,2\n3,4\n", "no x,y,z rows"), ("", "no x,y,z rows"),
                      ("1,2,3\na,b,c\n", "not a comma-separated")):
        (folder / "table" / "table_0002.txt").write_text(text)
        with pytest.raises(DataNotFoundError, match=msg):
            load_modelnet40(tmp_path, n_val=0, cache_dir=tmp_path / "c")


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", "2e6"])
def test_modelnet_rows_with_non_finite_or_huge_values_are_corrupt(tmp_path: Path, bad) -> None:
    folder = _write_modelnet(tmp_path)
    file = folder / "airplane" / "airplane_0004.txt"
    lines = file.read_text().splitlines()
    values = lines[2].split(",")
    values[1] = bad
    lines[2] = ",".join(values)
    file.write_text("\n".join(lines) + "\n")
    cache = tmp_path / "cache"
    with pytest.raises(DataNotFoundError, match=r"airplane_0004\.txt is corrupt: row 3") as err:
        load_modelnet40(tmp_path, n_points=16, n_val=2, cache_dir=cache)
    assert "good copy of ModelNet40" in str(err.value)
    assert not list(cache.glob("*.pt"))  # nothing of the corrupt split was cached


# ------------------------------------------------------------------ download path


def _zip_of(folder: Path, zip_path: Path) -> str:
    with zipfile.ZipFile(zip_path, "w") as z:
        for p in sorted(folder.rglob("*")):
            z.write(p, p.relative_to(folder.parent).as_posix())
    return hashlib.sha256(zip_path.read_bytes()).hexdigest()


def test_download_verifies_the_checksum_before_extracting(tmp_path: Path, monkeypatch) -> None:
    src = _write_modelnet(tmp_path / "src")
    zip_path = tmp_path / "modelnet40_normal_resampled.zip"
    digest = _zip_of(src, zip_path)
    dest = tmp_path / "dest"

    with pytest.raises(DataNotFoundError, match="SHA-256 .* does not match"):
        download_modelnet40(dest, urls=(zip_path.as_uri(),), sha256="0" * 64)
    assert not (dest / MODELNET40_FOLDER).exists() and not list(dest.iterdir())

    monkeypatch.setattr(points, "MODELNET40_SHA256", None)
    with pytest.raises(DataNotFoundError, match="no SHA-256 is recorded"):
        download_modelnet40(dest, urls=(zip_path.as_uri(),))

    # With the expected digest in place: a dead mirror is skipped, the next one is used.
    monkeypatch.setattr(points, "MODELNET40_SHA256", digest)
    monkeypatch.setattr(points, "MODELNET40_URLS",
                        ((tmp_path / "missing.zip").as_uri(), zip_path.as_uri()))
    sp = load_modelnet40(dest, n_points=8, n_val=1, download=True)
    assert len(sp.test) == 3 and (dest / MODELNET40_FOLDER / "airplane").is_dir()
    assert not list(dest.glob("*.part")) and not list(dest.glob(".modelnet40-extract-*"))

    bad = tmp_path / "bad.zip"  # right checksum, wrong contents
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("readme.txt", "nothing here")
    with pytest.raises(DataNotFoundError, match="does not contain"):
        download_modelnet40(tmp_path / "dest2", urls=(bad.as_uri(),),
                            sha256=hashlib.sha256(bad.read_bytes()).hexdigest())


# ------------------------------------------------------------------ augmentation, containers


def test_augment_points_is_seeded_and_does_what_it_says() -> None:
    x = synthetic_points(50, 128, seed=0).points
    a = augment_points(x, torch.Generator().manual_seed(1))
    b = augment_points(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == x.shape
    # No dropout: a pure scale in [0.8, 1.25] and a shift in [-0.1, 0.1] per axis.
    c = augment_points(x, torch.Generator().manual_seed(2), max_dropout=0.0)
    scale = (c[:, :, 1] - c[:, :, 0]) / (x[:, :, 1] - x[:, :, 0])
    assert torch.allclose(scale, scale[:, :1], atol=1e-4)
    assert (scale > 0.8 - 1e-4).all() and (scale < 1.25 + 1e-4).all()
    shift = c - scale[:, :1, None] * x
    assert shift.abs().max() <= 0.1 + 1e-5
    # Dropped points are copies of the cloud's first point.
    d = augment_points(x, torch.Generator().manual_seed(3), scale=(1.0, 1.0), shift=0.0)
    moved = (d != x).any(1)
    assert moved.any()
    assert torch.equal(d.permute(0, 2, 1)[moved], x[:, :, 0][moved.nonzero()[:, 0]])


def test_point_data_subset_and_validation() -> None:
    d = synthetic_points(20, 16, seed=0)
    s = d.subset(torch.tensor([3, 1]))
    assert torch.equal(s.points[0], d.points[3]) and s.labels[1] == d.labels[1]
    assert s.classes == d.classes and len(d.subset(d.labels == 0)) == 2
    with pytest.raises(ValueError, match="float32 N×3×P"):
        PointData(d.points.transpose(1, 2).contiguous(), d.labels)
    with pytest.raises(ValueError, match="float32"):
        PointData(d.points.double(), d.labels)
    with pytest.raises(ValueError, match="labels"):
        PointData(d.points, d.labels[:-1])
    for value in (float("nan"), float("inf")):
        bad = d.points.clone()
        bad[4, 2, 9] = value
        with pytest.raises(ValueError, match=r"'x': points hold NaN or infinite values \(clouds "
                                             r"\[4\]\)"):
            PointData(bad, d.labels, name="x")
