"""The benchmark scripts run end to end on the CPU and report what the GPU check reads.

Tiny sizes: this tests that the scripts work and print their JSON, not how fast anything is.
"""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_speed_prints_its_ratios_as_the_last_line(capsys):
    result = _script("train_speed").main([
        "--device", "cpu", "--quick", "--width", "0.0625", "--resnet-width", "0.0625",
        "--rounds", "1", "--steps", "2", "--budget", "1",
    ])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last) == result
    for key in ("pan_two_pass_over_plain", "pan_batched_over_plain", "batched_over_two_pass",
                "pan_alternating_over_plain", "resnet_pan_batched_over_plain",
                "pan_batched_conv3to5_over_plain", "other_mode_over_batched",
                "plain_nchw_over_nhwc", "pan_conv3to5_nchw_over_nhwc",
                "data_share_tensor", "data_share_reference"):
        assert result[key] > 0, key
    assert result["batched_mode"] == "split" and result["device"].startswith("cpu")


def test_gpu_epoch_dry_run_writes_its_json(tmp_path):
    report = _script("gpu_epoch").main(["--device", "cpu", "--quick", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "gpu_epoch.json").read_text())
    assert saved["runs"].keys() == report["runs"].keys() >= {"alexnet_pan_fast",
                                                             "alexnet_plain_fast"}
    assert report["alexnet_pan_over_plain"] > 0


def test_fitted_tail_seeds_prints_one_row_per_null_seed(capsys, pnorm_cache_dir):
    result = _script("fitted_tail_seeds").main(["--profile", "smoke", "--seeds", "0", "1",
                                                "--n-null", "20"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last) == result
    assert result["profile"] == "smoke" and result["arch"] == "pointnet"
    assert 0 <= result["matches"] <= result["bits"] > 0
    assert [r["null seed"] for r in result["rows"]] == [0, 1]
    for r in result["rows"]:
        assert 1 / 21 <= r["empirical p"] <= 1 and isinstance(r["passes"], bool)
