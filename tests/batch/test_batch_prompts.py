"""Prompt files and the VBench subset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from genmo_teacache.batch.prompts import (
    DEFAULT_PROMPTS_FILE,
    PromptFileError,
    build_vbench_subset,
    dump_prompt_subset,
    load_prompts,
    read_prompt_entries,
    resolve_prompts_file,
)

REPO = Path(__file__).parents[2]
REFERENCE_SUBSET = REPO / "tests" / "fixtures" / "hunyuan_vbench" / "prompts_subset.json"  # the reference's copy


def test_committed_subset_is_the_reference_copy():
    ours = (REPO / DEFAULT_PROMPTS_FILE).read_bytes()
    assert json.loads(ours) == json.loads(REFERENCE_SUBSET.read_bytes())
    assert ours == REFERENCE_SUBSET.read_bytes()


def test_subset_rebuilt_from_vbench_wheel_equals_reference():
    try:
        subset = build_vbench_subset()  # downloads the wheel once into $GENMO_TEACACHE_CACHE or ~/.cache
    except RuntimeError as e:
        if "could not download" in str(e):
            pytest.skip(f"vbench wheel not downloadable here: {e}")
        raise
    reference = json.loads(REFERENCE_SUBSET.read_text())
    assert len(subset) == 33
    assert subset == reference
    assert dump_prompt_subset(subset).encode() == REFERENCE_SUBSET.read_bytes()
    assert [e["prompt_en"] for e in subset[::3][:5]] == [
        "a person swimming in ocean", "Close up of grapes on a rotating table.", "alley",
        "In a still frame, a stop sign", "A person is riding a bike"]


def test_default_prompts_file_resolves_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = resolve_prompts_file(None)
    assert path.exists() and path.name == "prompts_subset.json"
    assert len(load_prompts(path)) == 33


def test_text_prompt_file(tmp_path):
    p = tmp_path / "prompts.txt"
    p.write_text("a cat\n\n  a dog on a skateboard  \na cat\na/b\n")
    entries = load_prompts(p)
    assert [e.text for e in entries] == ["a cat", "a dog on a skateboard", "a/b"]
    assert [e.line for e in entries] == [1, 3, 5]


def test_json_prompt_file_with_strings_and_entries(tmp_path):
    p = tmp_path / "prompts.json"
    p.write_text(json.dumps(["a cat", {"prompt_en": "a dog", "dimension": ["color"]}], indent=4))
    entries = read_prompt_entries(p)
    assert [e.text for e in entries] == ["a cat", "a dog"]
    assert entries[1].info["dimension"] == ["color"]
    assert entries[1].line == 3


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("p.json", '[\n  {"prompt_en": "a"},\n  {"prompt": "b"}\n]', "p.json:3: entry 1 has no 'prompt_en'"),
        ("p.json", '[\n  {"prompt_en": "a"},\n  {"prompt_en": "b",}\n]', "p.json:3:"),
        ("p.json", '[\n  {"prompt_en": "a"}\n  {"prompt_en": "b"}\n]', "p.json:3: expected ',' or ']'"),
        ("p.json", '[\n  {"prompt_en": "a"},\n  42\n]', "p.json:3: entry 1 is a JSON int"),
        ("p.json", '[\n  {"prompt_en": ""}\n]', "p.json:2: entry 0 has an empty"),
        ("p.json", '{"prompt_en": "a"}', "p.json:1: a JSON prompt file must be a list"),
        ("p.json", "[]", "no prompts found"),
        ("p.txt", b"a cat\nbad \xff byte\n", "p.txt:2: not valid UTF-8"),
        ("p.txt", "\n\n", "no prompts found"),
    ],
)
def test_malformed_prompt_files_name_the_line(tmp_path, name, content, message):
    p = tmp_path / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(PromptFileError) as e:
        read_prompt_entries(p)
    assert message in str(e.value)


def test_missing_prompt_file(tmp_path):
    with pytest.raises(PromptFileError, match="cannot read prompt file"):
        read_prompt_entries(tmp_path / "nope.txt")
