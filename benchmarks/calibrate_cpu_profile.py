"""Calibration sweep for the `cpu` profile's recipe: plain vs DeepIPR-style vs PAN.

Trains each scheme with the cpu profile's recipe (any device) for a few seeds and prints one
JSON line per run, so recipe choices are made from measurements rather than guesses.
Usage: python benchmarks/calibrate_cpu_profile.py [--device cuda] [--seeds 0 1] [--budget 200]
"""

import argparse
import json
import time

import torch

from pnorm import alexnet, passport, profiles, synthetic_images, training, verify

parser = argparse.ArgumentParser()
parser.add_argument("--device", default="cpu")
parser.add_argument("--seeds", type=int, nargs="+", default=[0])
parser.add_argument("--runs", nargs="+", default=None, help="subset of the run names below")
parser.add_argument("--budget", type=float, default=1e9,
                    help="start no new run after this many seconds")
args = parser.parse_args()
prof = profiles.get_profile("cpu")
splits = synthetic_images.synthetic_splits(prof.n_train, prof.n_val, prof.n_test, seed=0)
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
t_start = time.time()
for seed in args.seeds:
    for name, (scheme, layers, sign_weight, batched) in RUNS.items():
        if time.time() - t_start > args.budget:
            break
        if args.runs and name not in args.runs:
            continue
        model = alexnet.AlexNetCIFAR(width=prof.width, scheme=scheme, passport_layers=layers,
                                     seed=seed)
        if scheme != "plain":
            passport.key_model(model, torch.Generator().manual_seed(seed + 1))
        cfg = training.TrainConfig(recipe=prof.train, triggers_per_batch=prof.triggers_per_batch,
                                   seed=seed, sign_weight=sign_weight, batched=batched)
        t0 = time.time()
        training.train(model, splits, cfg, None if scheme == "plain" else trigger, args.device,
                       progress=False)
        branch = 0 if scheme == "plain" else "both"
        acc = verify.evaluate(model, splits.test, splits.mean, splits.std, branch,
                              device=args.device)
        row = {"run": name, "seed": seed, "seconds": round(time.time() - t0, 1),
               "acc0": acc if scheme == "plain" else acc[0],
               "acc1": None if scheme == "plain" else acc[1]}
        if scheme != "plain":
            det = verify.signature_detection(model)
            row.update(detection=det["pooled"], per_layer=det["per_layer"])
        print(json.dumps(row), flush=True)
