"""The results store that chapters write and the summary chapter reads."""

import json
import math

import pytest
import torch

import pnorm.results
from pnorm.profiles import PROFILES
from pnorm.results import load_results, record_results, recorded_value, results_dir

SMOKE, CPU = PROFILES["smoke"], PROFILES["cpu"]


@pytest.fixture(autouse=True)
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("PNORM_CACHE", str(tmp_path))
    return tmp_path


def test_round_trip_keeps_values_and_labels_rows():
    rows = [{"claim": "c", "quantity": "q", "value": torch.tensor(0.25), "unit": "fraction"},
            {"claim": "c", "quantity": "nan", "value": math.nan, "unit": "fraction"}]
    path = record_results("05-pruning", SMOKE, rows, data="synthetic shapes")
    assert path == results_dir(SMOKE) / "05-pruning.json"
    got = load_results(SMOKE)["05-pruning"]
    assert got["rows"][0]["value"] == 0.25 and got["rows"][1]["value"] is None
    assert (got["profile"], got["data"], got["stale"]) == ("smoke", "synthetic shapes", False)
    assert load_results(CPU) == {}  # profiles never mix


def test_records_from_other_code_are_flagged_stale(monkeypatch):
    record_results("02-training", SMOKE,
                   [{"claim": "c", "quantity": "q", "value": 1.0, "unit": "ratio"}])
    monkeypatch.setattr(pnorm.results, "source_fingerprint", lambda: "changed")
    assert load_results(SMOKE)["02-training"]["stale"] is True


def test_bad_values_and_damaged_files_are_named():
    with pytest.raises(TypeError, match="result values must be numbers"):
        record_results("x", SMOKE, [{"claim": "c", "quantity": "q", "value": object(),
                                     "unit": "count"}])
    with pytest.raises(ValueError, match="lacks"):
        record_results("x", SMOKE, [{"claim": "c", "value": 1.0}])
    with pytest.raises(ValueError, match="unit must be one of"):
        record_results("x", SMOKE, [{"claim": "c", "quantity": "q", "value": 1.0, "unit": "%"}])
    folder = results_dir(SMOKE)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json is unreadable"):
        load_results(SMOKE)
    (folder / "bad.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="not a pnorm result file"):
        load_results(SMOKE)


def test_recorded_value_finds_exact_or_prefixed_quantities_and_none_when_missing():
    rows = [{"claim": "c", "quantity": "PAN: lowest detection over 8 epochs", "value": 0.9,
             "unit": "fraction"},
            {"claim": "c", "quantity": "seeds", "value": 3, "unit": "count"}]
    record_results("04-fine-tuning", SMOKE, rows)
    records = load_results(SMOKE)
    assert recorded_value(records, "04-fine-tuning", "seeds") == 3
    assert recorded_value(records, "04-fine-tuning", "PAN: lowest detection") is None
    assert recorded_value(records, "04-fine-tuning", "PAN: lowest detection", prefix=True) == 0.9
    assert recorded_value(records, "02-training", "seeds") is None  # chapter not run
