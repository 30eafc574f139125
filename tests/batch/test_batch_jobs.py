"""Naming, jobs, costs and cost-balanced splitting (no model needed)."""

from __future__ import annotations

import itertools

import pytest

from genmo_teacache.batch.jobs import (
    BatchError,
    build_jobs,
    estimate_cost,
    log_name,
    select_prompts,
    split_jobs,
)
from genmo_teacache.batch.naming import MAX_STEM_BYTES, parse_modes, prompt_stem, stem_is_safe
from genmo_teacache.batch.prompts import PromptEntry
from genmo_teacache.caches import parse_mode

REFERENCE_MODES = "mochi_baseline,mochi_fixed_0.04,mochi_fixed_0.12,mochi_adaptive_0.12_0.04,mochi_adaptive_f34s14l16"


def entries(*texts: str) -> list[PromptEntry]:
    return [PromptEntry(t, i + 1) for i, t in enumerate(texts)]


@pytest.mark.parametrize("prompt", ["a cat", "In a still frame, a stop sign", "émigré café, 東京",
                                    "x" * MAX_STEM_BYTES])
def test_safe_prompts_are_used_verbatim(prompt):
    assert prompt_stem(prompt) == prompt


@pytest.mark.parametrize("prompt", ["a/b", "a\\b", ".hidden", "..", ".tmp-a cat", "a\x00b", "tab\there",
                                    "x" * (MAX_STEM_BYTES + 1), "é" * 101, "/"])
def test_unsafe_prompts_are_mapped_deterministically(prompt):
    stem = prompt_stem(prompt)
    assert stem != prompt
    assert stem == prompt_stem(prompt)
    assert stem_is_safe(stem)
    assert len((stem + "-4.mp4").encode()) <= 255
    assert "/" not in stem and not stem.startswith(".")


def test_mapped_names_do_not_collide():
    a, b = "x" * 300 + "a", "x" * 300 + "b"
    assert prompt_stem(a) != prompt_stem(b)
    assert prompt_stem("a/b") != prompt_stem("a\\b")


def test_parse_modes_keeps_names_as_written():
    modes = parse_modes(REFERENCE_MODES + ", fixed_0.04 ,mochi_baseline")
    assert [m for m, _ in modes] == REFERENCE_MODES.split(",") + ["fixed_0.04"]
    assert [c.name for _, c in modes] == ["baseline", "fixed_0.04", "fixed_0.12", "adaptive_0.12_0.04",
                                          "adaptive_f34s14l16", "fixed_0.04"]


@pytest.mark.parametrize("text, message", [("baseline,fixd_0.04", "fixd_0.04"), ("", "no modes"),
                                           ("baseline,../fixed_0.1", "cannot be a folder name")])
def test_bad_modes_are_named(text, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        parse_modes(text)


def test_costs_order_modes_and_baseline_is_most_expensive():
    costs = {m: estimate_cost(c, 64) for m, c in parse_modes(REFERENCE_MODES)}
    assert costs["mochi_baseline"] == 1.0
    assert max(costs.values()) == 1.0
    assert costs["mochi_fixed_0.04"] > costs["mochi_adaptive_0.12_0.04"] > costs["mochi_fixed_0.12"]
    assert parse_mode("fixed_0.5-max1").computed_fraction(64) >= 0.5


def test_jobs_naming_seeds_and_order():
    modes = parse_modes("baseline,fixed_0.1")
    jobs = build_jobs(select_prompts(entries("a cat", "a/dog", "a cow"), 1), modes, num_samples=2,
                      generation_seed=7, num_steps=16)
    assert len(jobs) == 2 * 2 * 2
    assert [j.index for j in jobs] == list(range(8))
    assert {j.prompt_index for j in jobs} == {1, 2}
    first = jobs[0]
    assert first.prompt == "a/dog" and first.stem == prompt_stem("a/dog") and first.mode == "baseline"
    assert first.video_relpath == f"videos/baseline/{first.stem}-0.mp4"
    assert first.report_relpath == f"reports/baseline/{first.stem}-0.json"
    assert [j.seed for j in jobs[:2]] == [7, 8]
    assert jobs[7].id == "fixed_0.1/a cow-1"


def test_schedule_that_does_not_fit_names_the_mode():
    """A fixed-length schedule shorter than the run is an error; a longer one is cut, as the reference does."""
    with pytest.raises(BatchError, match="mode 'schedule_4x0.1_4x0.2'.*covers 8 steps but num_steps=16"):
        build_jobs(select_prompts(entries("a")), parse_modes("baseline,schedule_4x0.1_4x0.2"), 1, 0, 16)
    jobs = build_jobs(select_prompts(entries("a")), parse_modes("baseline,mochi_adaptive_f34s14l16"), 1, 0, 16)
    assert [j.mode for j in jobs] == ["baseline", "mochi_adaptive_f34s14l16"]


@pytest.mark.parametrize("n", [0, 6])
def test_num_samples_bounds(n):
    with pytest.raises(BatchError, match="--num-samples"):
        build_jobs(select_prompts(entries("a")), parse_modes("baseline"), n, 0, 16)


@pytest.mark.parametrize("start, end", [(3, None), (1, 1), (-1, 2)])
def test_empty_prompt_range(start, end):
    with pytest.raises(BatchError, match="select no prompts"):
        select_prompts(entries("a", "b", "c"), start, end)


@pytest.mark.parametrize("shares", [1, 2, 3, 4, 7, 40])
def test_split_assigns_every_job_exactly_once_and_balances(shares):
    prompts = select_prompts(entries(*[f"prompt {i}" for i in range(11)]))
    jobs = build_jobs(prompts, parse_modes(REFERENCE_MODES), 2, 0, 64)
    parts = split_jobs(jobs, shares)
    assert len(parts) == shares
    flat = [j.index for part in parts for j in part]
    assert sorted(flat) == [j.index for j in jobs]  # exactly once
    loads = [sum(j.cost for j in part) for part in parts]
    if shares <= len(jobs):
        # longest-processing-time bound: no share exceeds the lightest by more than the largest job
        assert max(loads) - min(loads) <= max(j.cost for j in jobs) + 1e-9
    assert split_jobs(jobs, shares) == parts  # deterministic


def test_split_balances_better_than_round_robin():
    jobs = build_jobs(select_prompts(entries(*[f"p{i}" for i in range(33)])), parse_modes(REFERENCE_MODES), 1, 0, 64)
    parts = split_jobs(jobs, 4)
    loads = [sum(j.cost for j in p) for p in parts]
    assert max(loads) / min(loads) < 1.02
    # pairs of the same prompt in different modes do not need to be on the same share, but all modes are spread
    assert all(len({j.mode for j in p}) > 1 for p in parts)


def test_log_names():
    assert log_name(0, 33) == "generation_log_0-33.json"
    assert log_name(0, 33, 1, 4) == "generation_log_0-33_gpu1of4.json"
    assert log_name(5, 9, 0, 1) == "generation_log_5-9.json"


def test_every_reference_mode_combination_builds():
    for a, b in itertools.combinations(REFERENCE_MODES.split(","), 2):
        assert len(build_jobs(select_prompts(entries("a")), parse_modes([a, b]), 1, 0, 64)) == 2


@pytest.mark.parametrize("mode", ["adaptive_0.12_0.04", "schedule_2x0.1_2x0.2"])
def test_a_schedule_that_does_not_fit_names_options_that_batch_has(mode):
    """Batch has no --teacache_high_steps (a generate option): its hint names --num_steps and mode names."""
    try:
        build_jobs(select_prompts(entries("a cat")), parse_modes(mode), 1, 0, 6)
    except BatchError as e:
        message = str(e)
    else:  # an open-ended schedule may be cut at --num_steps instead: then there is nothing to hint
        assert parse_mode(mode).method.schedule[-1][0] is None, f"{mode} does not fit 6 steps, yet no error"
        return
    assert f"mode {mode!r}" in message and "--num_steps 6" in message
    assert "adaptive_<hi>_<lo>_h<n>" in message and "schedule_" in message
    assert "--teacache" not in message
