"""Where the owner's own signature falls in the fitted tail of the random-passport null, per seed.

The signature test (``pnorm.verify.Thresholds``) asks for an empirical p-value and a tail fitted
to random passports tried on the suspect; a perfect match on strongly correlated bits lies only
a few null standard deviations out, so the fitted threshold must be reachable. This loads (or
trains) a chapter's protected model of the profile, as chapters 3 and 7 key it, and prints per
null seed the empirical p, the fitted log10 p and whether the signature test passes; the JSON
summary is the last line.
Usage: python benchmarks/fitted_tail_seeds.py [--profile cpu] [--arch pointnet] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

import pnorm  # noqa: E402
from pnorm import profiles  # noqa: E402
from pnorm.claims import random_passport_null  # noqa: E402
from pnorm.verify import Thresholds, signature_detection  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    """Measure the owner's fitted-tail p-value under each null seed; return the summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default=None, help="profile name (default: the package's)")
    parser.add_argument("--arch", choices=("pointnet", "alexnet"), default="pointnet")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 100])
    parser.add_argument("--n-null", type=int, default=200, help="random passports per null")
    args = parser.parse_args(argv)

    profile = profiles.get_profile(args.profile)
    if args.arch == "pointnet":
        splits = pnorm.point_splits(profile, seed=0)
        trigger = pnorm.point_trigger(profile, splits.num_classes)
    else:
        splits = pnorm.image_splits(profile, seed=0)
        trigger = pnorm.trigger_set(profile, splits.num_classes)
    pan = pnorm.train_or_load("pan", profile, splits, trigger, preset="clean", seed=0,
                              message="pnorm", key_seed=1, arch=args.arch, progress=False)
    protected = pan.vault.attach(pan.public)
    detection = signature_detection(protected)
    rule = Thresholds()
    rows = []
    for seed in args.seeds:
        null = random_passport_null(protected, pan.vault.signature, args.n_null, seed)
        summary = null.summary(detection["matches"])
        rows.append({"null seed": seed, "empirical p": summary["empirical p"],
                     "fitted log10 p": summary["fitted log10 p"],
                     "passes": rule.signature_passes(summary)})
        print(f"null seed {seed}: {detection['matches']}/{detection['bits']} bits, empirical p "
              f"{summary['empirical p']:.4f}, fitted log10 p {summary['fitted log10 p']:.2f}, "
              f"{'passes' if rows[-1]['passes'] else 'fails'} (fitted bar "
              f"{rule.max_fitted_log10_p:g})")
    result = {"profile": profile.name, "arch": args.arch, "matches": detection["matches"],
              "bits": detection["bits"], "max_fitted_log10_p": rule.max_fitted_log10_p,
              "rows": rows}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
