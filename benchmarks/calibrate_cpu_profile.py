"""Calibration of the `cpu` profile's recipe: plain vs DeepIPR-style vs PAN, over seeds.

Trains each scheme with the cpu profile's recipe (or the overrides given) for a few seeds and
prints one JSON line per run, then a table of mean ± sd per run name, so recipe choices are
made from measurements. A run converged when its validation accuracy is flat over the last
quarter of training (``last_quarter_range``: max - min of those epochs' accuracies).
Usage: python benchmarks/calibrate_cpu_profile.py --seeds 0 1 2 --runs plain pan-conv345 \
       [--optimizer sgd --lr 0.01 --epochs 12 --width 0.125 --passports images --threads 1]
book/reproduce.md tabulates the runs that chose the `cpu` recipe.
"""

import argparse
import json
import statistics
import time
from dataclasses import replace

import torch

from pnorm import alexnet, passport, profiles, synthetic_images, training, verify
from pnorm.batches import model_inputs
from pnorm.units import passport_layers

parser = argparse.ArgumentParser()
parser.add_argument("--device", default="cpu")
parser.add_argument("--seeds", type=int, nargs="+", default=[0])
parser.add_argument("--runs", nargs="+", default=None, help="subset of the run names below")
parser.add_argument("--budget", type=float, default=1e9,
                    help="start no new run after this many seconds")
parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
parser.add_argument("--epochs", type=int, default=None)
parser.add_argument("--lr", type=float, default=None)
parser.add_argument("--batch", type=int, default=None)
parser.add_argument("--lr-schedule", choices=["step", "cosine"], default=None)
parser.add_argument("--optimizer", choices=["sgd", "adam"], default=None)
parser.add_argument("--width", type=float, default=None)
parser.add_argument("--n-train", type=int, default=None)
parser.add_argument("--triggers-per-batch", type=int, default=None)
parser.add_argument("--passports", choices=["random", "images"], default="random",
                    help="U(-1, 1) passports, or passports selected from training images")
args = parser.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)
prof = profiles.get_profile("cpu")
recipe = prof.train
for field, value in (("epochs", args.epochs), ("lr", args.lr), ("batch_size", args.batch),
                     ("lr_schedule", args.lr_schedule), ("optimizer", args.optimizer)):
    if value is not None:
        recipe = replace(recipe, **{field: value})
if recipe.lr_schedule == "cosine":
    recipe = replace(recipe, milestones=())
width = args.width or prof.width
n_train = args.n_train or prof.n_train
tpb = prof.triggers_per_batch if args.triggers_per_batch is None else args.triggers_per_batch
splits = synthetic_images.synthetic_splits(n_train, prof.n_val, prof.n_test, seed=0)
trigger = synthetic_images.abstract_trigger_set(prof.n_triggers, 10, seed=1)
CONV345 = ["conv3", "conv4", "conv5"]
# name -> (scheme, passport layers, sign-loss weight, both branches in one call); weight 0 is
# the "no signature" ablation; "two-pass" is the reference path (the original's structure)
RUNS = {
    "plain": ("plain", None, 1.0, True),
    "pan-all": ("pan", None, 1.0, True),
    "pan-conv345": ("pan", CONV345, 1.0, True),
    "pan-conv345-two-pass": ("pan", CONV345, 1.0, False),
    "pan-conv345-no-sign-loss": ("pan", CONV345, 0.0, True),
    "deepipr-all": ("deepipr", None, 1.0, True),
    "deepipr-conv345": ("deepipr", CONV345, 1.0, True),
}
print(json.dumps({"recipe": str(recipe), "width": width, "n_train": n_train,
                  "triggers_per_batch": tpb, "passports": args.passports}), flush=True)


def image_passports(model: torch.nn.Module, seed: int) -> dict:
    """DeepIPR's passport selection: activations of 20 training images through a plain net."""
    plain = alexnet.AlexNetCIFAR(width=width, scheme="plain", seed=seed + 1000)
    g = torch.Generator().manual_seed(seed + 2)
    idx = torch.randperm(len(splits.train), generator=g)[:40]
    x = model_inputs(splits.train.images[idx], splits.mean, splits.std)
    names = list(passport_layers(model))
    pg = passport.passports_from_images(plain, x[:20], names, g)
    pb = passport.passports_from_images(plain, x[20:], names, g)
    return {n: (pg[n], pb[n]) for n in names}


rows = []
t_start = time.time()
for seed in args.seeds:
    for name, (scheme, layers, sign_weight, batched) in RUNS.items():
        if time.time() - t_start > args.budget:
            break
        if args.runs and name not in args.runs:
            continue
        model = alexnet.AlexNetCIFAR(width=width, scheme=scheme, passport_layers=layers,
                                     seed=seed)
        if scheme != "plain":
            given = image_passports(model, seed) if args.passports == "images" else None
            passport.key_model(model, torch.Generator().manual_seed(seed + 1), passports=given)
        cfg = training.TrainConfig(recipe=recipe, triggers_per_batch=tpb, seed=seed,
                                   sign_weight=sign_weight, batched=batched)
        t0 = time.time()
        result = training.train(model, splits, cfg, None if scheme == "plain" else trigger,
                                args.device, progress=False)
        branch = 0 if scheme == "plain" else "both"
        acc = verify.evaluate(model, splits.test, splits.mean, splits.std, branch,
                              device=args.device)
        val = [r["val_acc0"] for r in result.history]
        quarter = val[-max(1, len(val) // 4):]
        row = {"run": name, "seed": seed, "seconds": round(time.time() - t0, 1),
               "acc0": acc if scheme == "plain" else acc[0],
               "acc1": None if scheme == "plain" else acc[1],
               "last_quarter_range": round(max(quarter) - min(quarter), 4),
               "val": [round(v, 3) for v in val]}
        if scheme != "plain":
            det = verify.signature_detection(model)
            row.update(detection=det["pooled"],
                       trigger0=verify.evaluate(model, trigger, splits.mean, splits.std, 0,
                                                device=args.device))
        rows.append(row)
        print(json.dumps(row), flush=True)

for name in dict.fromkeys(r["run"] for r in rows):
    part = [r for r in rows if r["run"] == name]
    for key in ("acc0", "acc1", "trigger0", "detection", "seconds"):
        vals = [r[key] for r in part if r.get(key) is not None]
        if vals:
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            print(f"{name:28s} {key:10s} mean {statistics.mean(vals):.4f} sd {sd:.4f} "
                  f"(n={len(vals)})")
