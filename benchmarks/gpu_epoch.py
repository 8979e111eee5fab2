"""One timed epoch of the faithful CIFAR-10 recipe through ``pnorm.train``, on any device.

Random uint8 tensors of CIFAR-10's shape stand in for the data (no download); the speed of an
epoch does not depend on pixel values. Writes ``<out>/gpu_epoch.json`` and prints it last.
Usage: python benchmarks/gpu_epoch.py --out DIR [--device cuda] [--quick] [--resnet]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from pnorm.images import CIFAR_MEAN, CIFAR_STD, ImageData, ImageSplits  # noqa: E402
from pnorm.models import build_model  # noqa: E402
from pnorm.passport import key_model  # noqa: E402
from pnorm.recipes import Recipe  # noqa: E402
from pnorm.training import amp_dtype, config_for, train, uses_channels_last  # noqa: E402


def cifar_shaped(n_train: int, n_val: int, n_test: int, seed: int = 0) -> ImageSplits:
    """Random uint8 images and labels in CIFAR-10's layout (45 000 / 5 000 / 10 000 by default)."""
    g = torch.Generator().manual_seed(seed)

    def part(n: int, name: str) -> ImageData:
        images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
        return ImageData(images, torch.randint(0, 10, (n,), generator=g),
                         [str(i) for i in range(10)], name)

    return ImageSplits(part(n_train, "train"), part(n_val, "val"), part(n_test, "test"),
                       CIFAR_MEAN, CIFAR_STD, 10, "random-cifar-shaped")


def timed_epoch(arch: dict, scheme: str, splits: ImageSplits, trigger: ImageData,
                device: str, **overrides) -> dict:
    """Train one epoch of the faithful recipe (batch 64 + 2 triggers, SGD 0.01); time it.

    The speed knobs are automatic (``amp=None``: autocast on CUDA) unless ``overrides`` set
    them; the ``faithful`` preset itself trains in float32 (the ``fp32_nchw`` run).
    """
    model = build_model({**arch, "scheme": scheme}, seed=0)
    if scheme != "plain":
        key_model(model, torch.Generator().manual_seed(1))
    cfg = config_for("faithful", recipe=Recipe(epochs=1), **{"amp": None, **overrides})
    t0 = time.perf_counter()
    result = train(model, splits, cfg, None if scheme == "plain" else trigger, device,
                   progress=False)
    wall = time.perf_counter() - t0
    rec = result.history[0]
    steps = len(splits.train) // cfg.recipe.batch_size
    return {
        "arch": arch["arch"], "scheme": scheme, "steps": steps,
        "train_seconds": round(rec["train_seconds"], 2),
        "ms_per_step": round(1e3 * rec["train_seconds"] / steps, 3),
        "epoch_seconds_with_eval": round(wall, 2),
        "amp": str(amp_dtype(cfg, device)), "channels_last": uses_channels_last(cfg, device),
        "compile": cfg.compile, "loss0": round(rec["loss0"], 4),
    }


def count_syncs(arch: dict, splits: ImageSplits, trigger: ImageData, device: str,
                steps: tuple[int, int] = (20, 40)) -> dict:
    """Host syncs in a one-epoch run of ``steps[0]`` vs ``steps[1]`` steps (CUDA sync debug).

    Evaluation and checkpointing sync a fixed number of times per epoch; if the training loop
    synced per step, the longer run would show ``steps[1] - steps[0]`` more.
    """
    counts = []
    for n_steps in steps:
        part = replace(splits, train=splits.train.subset(torch.arange(64 * n_steps)))
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                timed_epoch(arch, "pan", part, trigger, device)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        counts.append(sum("synchroniz" in str(w.message).lower() for w in caught))
    return {"steps": list(steps), "sync_warnings": counts,
            "extra_syncs_per_step": (counts[1] - counts[0]) / (steps[1] - steps[0])}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for gpu_epoch.json")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="tiny sizes (a CPU dry run)")
    p.add_argument("--resnet", action="store_true", help="also time ResNet-18 (faithful)")
    p.add_argument("--compile", action="store_true", help="also time a torch.compile epoch")
    p.add_argument("--budget", type=float, default=300.0,
                   help="start no new measurement after this many seconds")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = (640, 128, 128) if args.quick else (45_000, 5_000, 10_000)
    splits = cifar_shaped(*sizes)
    g = torch.Generator().manual_seed(1)
    trigger = ImageData(torch.randint(0, 256, (100, 3, 32, 32), dtype=torch.uint8, generator=g),
                        torch.randint(0, 10, (100,), generator=g), [str(i) for i in range(10)],
                        "trigger")
    alexnet = {"arch": "alexnet", "num_classes": 10, "width": 0.25 if args.quick else 1.0}
    resnet = {"arch": "resnet18", "num_classes": 10, "variant": "faithful",
              "width": 0.125 if args.quick else 1.0}
    # name -> (architecture, scheme, TrainConfig overrides); the first is the headline number
    runs = {
        "alexnet_pan_fast": (alexnet, "pan", {}),
        "alexnet_plain_fast": (alexnet, "plain", {}),
        "alexnet_pan_fp32_nchw": (alexnet, "pan", {"amp": "off", "channels_last": False}),
        "alexnet_pan_two_pass": (alexnet, "pan", {"batched": False}),
    }
    if args.compile:
        runs["alexnet_pan_compiled"] = (alexnet, "pan", {"compile": True})
    if args.resnet:
        runs["resnet18_faithful_pan_fast"] = (resnet, "pan", {})
        runs["resnet18_faithful_plain_fast"] = (resnet, "plain", {})
    dev = torch.device(args.device)
    report: dict = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda"
        else f"cpu ({platform.processor() or platform.machine()})",
        "torch": torch.__version__, "data": "random uint8, CIFAR-10 shape",
        "n_train": sizes[0], "batch": "64+2",
        "recipe": "faithful (summed losses, select=test); amp automatic unless a run sets it",
        "runs": {}, "skipped": [],
    }
    t_start = time.perf_counter()
    for name, (arch, scheme, overrides) in runs.items():
        if time.perf_counter() - t_start > args.budget:
            report["skipped"].append(name)
            continue
        report["runs"][name] = timed_epoch(arch, scheme, splits, trigger, args.device,
                                           **overrides)
        print(name, json.dumps(report["runs"][name]), flush=True)
        (out / "gpu_epoch.json").write_text(json.dumps(report, indent=2) + "\n")  # partial
    r = report["runs"]
    if "alexnet_plain_fast" in r:
        report["alexnet_pan_over_plain"] = round(
            r["alexnet_pan_fast"]["train_seconds"] / r["alexnet_plain_fast"]["train_seconds"], 3)
    if "alexnet_pan_fp32_nchw" in r:
        report["fp32_nchw_over_fast"] = round(
            r["alexnet_pan_fp32_nchw"]["train_seconds"] / r["alexnet_pan_fast"]["train_seconds"],
            3)
    if dev.type == "cuda" and time.perf_counter() - t_start < args.budget:
        try:  # a diagnostic: never lose the timings above because of it
            report["sync_check"] = count_syncs(alexnet, splits, trigger, args.device,
                                               (4, 8) if args.quick else (20, 40))
        except Exception as err:
            report["sync_check"] = {"error": f"{type(err).__name__}: {err}"}
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    (out / "gpu_epoch.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
