"""The recorded GPU results keep the files and fields the team reads (issue 14's list): a benchmark re-run that
renames a field, or a hand edit, fails here instead of silently breaking whoever reads them."""

import json
from pathlib import Path

import pytest

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "bench_results"


def load(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())


def test_forward_163f_has_upstream_default_and_every_variant_measured():
    d = load("forward_163f")
    assert d["device"]["gpus"] == 1 and d["frames"] == 163
    names = [v["name"] for v in d["variants"]]
    assert "upstream_default" in names and len(names) == len(set(names))
    for v in d["variants"]:
        assert {"name", "forward_s", "peak_gib", "mean_abs_diff"} <= v.keys(), v["name"]
        assert v["forward_s"] > 0 and v["peak_gib"] > 0 and v["mean_abs_diff"] >= 0
    assert next(v for v in d["variants"] if v["name"] == "upstream_default")["mean_abs_diff"] == 0


def test_headline_is_the_full_64_step_loop_with_its_forward_count():
    d = load("headline_163f_64s")
    assert d["frames"] == 163 and d["steps"] == 64 and d["device"]["gpus"] == 1
    assert {"dit_forwards", "denoise_s", "options"} <= d.keys()
    assert d["dit_forwards"] == 64 and d["denoise_s"] > 0
    assert d["cfg_pattern"]["dit_forwards"] == 48


def test_peers_rows_name_a_system_and_its_times():
    d = load("peers_163f")
    assert d["frames"] == 163 and "device" in d
    systems = [r["system"] for r in d["rows"]]
    assert any(s.startswith("ours") for s in systems) and any("cache-dit" in s for s in systems)
    for r in d["rows"]:
        assert {"system", "loop_s", "computed_steps", "peak_gib"} <= r.keys(), r["system"]
        assert "forward_s" in r or r["group"] == "cached", r["system"]


def test_cfg_parallel_result_when_recorded():
    path = RESULTS / "cfg_parallel_2gpu.json"
    if not path.exists():
        pytest.skip("cfg_parallel_2gpu.json not recorded: the 2-GPU machine was not lent (docs/BENCHMARKS.md, 13)")
    d = json.loads(path.read_text())
    assert d["device"]["gpus"] == 2
    assert {"frames", "single_step_s", "cp_step_s", "cfg_parallel_step_s", "latents_identical"} <= d.keys()


def test_low_memory_result_when_recorded():
    path = RESULTS / "low_memory_163f.json"
    if not path.exists():
        pytest.skip("low_memory_163f.json not recorded yet: bench/bench_low_memory.py on an H200 (issue 23)")
    d = json.loads(path.read_text())
    fields = {"frames", "steps", "memory_cap_gib", "peak_gib", "denoise_s", "total_s", "options"}
    assert fields | {"device", "without_option"} <= d.keys() and d["frames"] == 163 and d["steps"] == 64
    assert d["options"]["low_memory"] is True and d["memory_cap_gib"] > 0
    assert fields <= d["without_option"].keys() and d["without_option"]["memory_cap_gib"] is None
