"""How close PAN training sits to its cost floor: step times of plain vs PAN, measured side by side.

Variants run round-robin (order rotated every round) for several rounds and report medians, so
load drift hits all of them alike. The last stdout line is one JSON object with the ratios.
Usage: python benchmarks/train_speed.py [--device cuda] [--quick] [--no-resnet] [--compile]
On a CPU that other jobs keep busy, add --threads 1: with more OpenMP threads than free cores,
small ops stall waiting for descheduled threads and every ratio becomes noise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from pnorm.alexnet import AlexNetCIFAR  # noqa: E402
from pnorm.images import CIFAR_MEAN, CIFAR_STD, crop_flip, normalize  # noqa: E402
from pnorm.passport import key_model  # noqa: E402
from pnorm.recipes import Recipe  # noqa: E402
from pnorm.resnet import ResNet18CIFAR  # noqa: E402
from pnorm.training import (  # noqa: E402
    TrainConfig,
    _epoch_plan,
    amp_dtype,
    training_step,
    uses_channels_last,
)

Step = Callable[[], None]


def sync(device: torch.device) -> None:
    """Wait for queued device work, so a timer measures the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_step(model: torch.nn.Module, config: TrainConfig, batch: int, device: torch.device,
               seed: int) -> Step:
    """A closure doing one training step of ``model`` on a fixed batch, as ``train`` would.

    Alternating schedules advance a step counter, so their median covers both kinds of step.
    """
    model.to(device).train()
    channels_last = uses_channels_last(config, device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if config.compile else None
    dtype = amp_dtype(config, device)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, 32, 32, generator=g).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    counter = [0]

    def step() -> None:
        training_step(model, x, y, opt, config, step=counter[0], forward=forward, scaler=scaler)
        counter[0] += 1

    return step


def tensor_pipeline(n: int, config: TrainConfig, device: torch.device) -> Step:
    """One batch of the on-device pipeline of ``train``: plan share, index, crop/flip, normalise."""
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8).to(device)
    labels = torch.randint(0, 10, (n,)).to(device)
    trig_x = normalize(torch.randint(0, 256, (100, 3, 32, 32), dtype=torch.uint8).to(device),
                       CIFAR_MEAN, CIFAR_STD)
    trig_y = torch.randint(0, 10, (100,)).to(device)
    mean = torch.tensor(CIFAR_MEAN, device=device).view(-1, 1, 1)
    std = torch.tensor(CIFAR_STD, device=device).view(-1, 1, 1)
    state = {"plan": None, "s": 0, "epoch": 0}
    steps = n // config.recipe.batch_size

    def step() -> None:
        if state["plan"] is None or state["s"] == steps:  # the per-epoch plan, amortised
            g0 = torch.Generator().manual_seed(state["epoch"])
            g1 = torch.Generator().manual_seed(state["epoch"] + 1)
            state["plan"] = _epoch_plan(n, config, True, 100, g0, g1, device)
            state["s"], state["epoch"] = 0, state["epoch"] + 1
        plan, s = state["plan"], state["s"]
        idx = plan["idx"][s]
        x = crop_flip(images[idx], plan["oy"][s], plan["ox"][s], plan["flip"][s])
        x, y = (x.float() / 255.0 - mean) / std, labels[idx]
        t_idx = plan["trig"][s]
        x, y = torch.cat([x, trig_x[t_idx]]), torch.cat([y, trig_y[t_idx]])
        if uses_channels_last(config, device):
            x = x.contiguous(memory_format=torch.channels_last)
        state["s"] += 1

    return step


def reference_pipeline(n: int, batch: int, device: torch.device, workers: int) -> Step:
    """One batch of the classic pipeline: DataLoader over PIL images with torchvision transforms.

    RandomCrop(32, padding 4) + RandomHorizontalFlip + ToTensor + Normalize, as the original
    PAN code (book/method.md#method-data), then the copy to the device.
    """
    import numpy as np
    from PIL import Image
    from torchvision import transforms

    arrays = np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    tf = transforms.Compose([
        transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), transforms.Normalize(CIFAR_MEAN, CIFAR_STD),
    ])

    class Images(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return n

        def __getitem__(self, i: int):
            return tf(Image.fromarray(arrays[i])), i % 10

    loader = torch.utils.data.DataLoader(
        Images(), batch_size=batch, shuffle=True, drop_last=True, num_workers=workers,
        pin_memory=device.type == "cuda", persistent_workers=workers > 0,
    )
    state = {"it": iter(loader)}

    def step() -> None:
        try:
            x, y = next(state["it"])
        except StopIteration:
            state["it"] = iter(loader)
            x, y = next(state["it"])
        x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    return step


def measure(variants: dict[str, Step], rounds: int, steps: int, warmup: int,
            device: torch.device, budget_s: float) -> dict[str, float]:
    """Median seconds per call of every variant, interleaved round-robin over ``rounds``."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    start = time.perf_counter()
    for r in range(rounds):
        if r >= 3 and time.perf_counter() - start > budget_s:
            break
        for name in names[r % len(names):] + names[: r % len(names)]:  # rotate the order
            sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                variants[name]()
            sync(device)
            times[name].append((time.perf_counter() - t0) / steps)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="small sizes: < 2 minutes on 2 CPU cores")
    p.add_argument("--width", type=float, default=None, help="AlexNet width (default 1.0)")
    p.add_argument("--batch", type=int, default=64, help="clean images per step (+2 triggers)")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="steps per variant per round")
    p.add_argument("--no-resnet", action="store_true", help="skip the ResNet-18 variants")
    p.add_argument("--resnet-width", type=float, default=None)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers (reference)")
    p.add_argument("--compile", action="store_true", help="torch.compile every model")
    p.add_argument("--budget", type=float, default=None, help="seconds for the timed rounds")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cpu = device.type == "cpu"
    quick = args.quick
    width = args.width or (0.5 if quick and cpu else 1.0)
    rwidth = args.resnet_width or (0.25 if cpu else 1.0)
    rounds = args.rounds or (5 if quick else 9)
    steps = 2 * -(-(args.steps or (2 if cpu else 10)) // 2)  # even: alternating pairs up
    budget = args.budget or (40.0 if quick else 600.0)
    n_data = 10_000 if quick else 50_000
    batch = args.batch + 2  # the clean batch plus 2 trigger images (book/method.md#method-data)
    base = TrainConfig(recipe=Recipe(batch_size=args.batch), compile=args.compile)
    load_before = os.getloadavg()

    def alexnet(scheme: str, layers: tuple[str, ...] | None = None) -> AlexNetCIFAR:
        model = AlexNetCIFAR(width=width, scheme=scheme, passport_layers=layers, seed=0)
        if scheme != "plain":
            key_model(model, torch.Generator().manual_seed(1))
        return model

    mode = "concat" if device.type == "cuda" else "split"  # what run_both picks here

    def other_mode(model: AlexNetCIFAR) -> AlexNetCIFAR:
        model.batch_branches = mode == "split"
        return model

    variants = {
        "plain": model_step(alexnet("plain"), base, batch, device, 2),
        "pan_two_pass": model_step(alexnet("pan"), replace(base, batched=False), batch, device, 2),
        "pan_batched": model_step(alexnet("pan"), base, batch, device, 2),
        "pan_alternating": model_step(alexnet("pan"), replace(base, schedule="alternating"),
                                      batch, device, 2),
        # run_both's other way to run the diverged halves (CUDA default: concat, CPU: split)
        "pan_other_mode": model_step(other_mode(alexnet("pan")), base, batch, device, 2),
        # the cpu profile's map: conv1-conv2 are a plain prefix both branches share
        "pan_batched_conv3to5": model_step(alexnet("pan", ("conv3", "conv4", "conv5")), base,
                                           batch, device, 2),
        # the activation layout, both ways (the CPU profiles train AlexNet in NHWC)
        **{f"{name}_{layout}": model_step(alexnet(scheme, layers),
                                          replace(base, channels_last=layout == "nhwc"),
                                          batch, device, 2)
           for name, scheme, layers in (("plain", "plain", None),
                                        ("pan_conv3to5", "pan", ("conv3", "conv4", "conv5")))
           for layout in ("nchw", "nhwc")},
        "data_reference": reference_pipeline(n_data, args.batch, device, args.workers),
        "data_tensor": tensor_pipeline(n_data, base, device),
    }
    if not args.no_resnet:
        for scheme in ("plain", "pan"):
            model = ResNet18CIFAR(width=rwidth, scheme=scheme, variant="faithful", seed=0)
            if scheme == "pan":
                key_model(model, torch.Generator().manual_seed(1))
            variants[f"resnet_{scheme}"] = model_step(model, base, batch, device, 2)
    t0 = time.perf_counter()
    sec = measure(variants, rounds, steps, warmup=1 if cpu else 5, device=device,
                  budget_s=budget)
    ms = {k: round(v * 1e3, 3) for k, v in sec.items()}
    for k, v in ms.items():
        print(f"{k:>18}: {v:10.2f} ms per step")
    pan = sec["pan_batched"]
    result = {
        "pan_two_pass_over_plain": round(sec["pan_two_pass"] / sec["plain"], 3),
        "pan_batched_over_plain": round(pan / sec["plain"], 3),
        "batched_over_two_pass": round(pan / sec["pan_two_pass"], 3),
        "pan_alternating_over_plain": round(sec["pan_alternating"] / sec["plain"], 3),
        "batched_mode": mode,
        "other_mode_over_batched": round(sec["pan_other_mode"] / pan, 3),
        "pan_batched_conv3to5_over_plain": round(sec["pan_batched_conv3to5"] / sec["plain"], 3),
        "plain_nchw_over_nhwc": round(sec["plain_nchw"] / sec["plain_nhwc"], 3),
        "pan_conv3to5_nchw_over_nhwc": round(sec["pan_conv3to5_nchw"] / sec["pan_conv3to5_nhwc"],
                                             3),
        "resnet_pan_batched_over_plain": (
            None if args.no_resnet else round(sec["resnet_pan"] / sec["resnet_plain"], 3)
        ),
        # the data pipeline's share of a PAN training epoch (time per batch, data + step)
        "data_share_reference": round(sec["data_reference"] / (sec["data_reference"] + pan), 3),
        "data_share_tensor": round(sec["data_tensor"] / (sec["data_tensor"] + pan), 3),
        "reference_data_over_tensor_data": round(sec["data_reference"] / sec["data_tensor"], 1),
        "ms_per_step": ms,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda"
        else f"cpu ({platform.processor() or platform.machine()})",
        "threads": torch.get_num_threads(),
        "amp": str(amp_dtype(base, device)),
        "channels_last": uses_channels_last(base, device),
        "compile": args.compile,
        "alexnet_width": width,
        "resnet_width": None if args.no_resnet else rwidth,
        "batch": f"{args.batch}+2",
        "rounds": rounds,
        "steps_per_round": steps,
        "data_workers": args.workers,
        "loadavg_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "seconds": round(time.perf_counter() - t0, 1),
        "torch": torch.__version__,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
