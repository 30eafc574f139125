"""A weights directory is checked before anything loads: each fault is reported naming the file, in well under a
second, never as a traceback after loading (or a run whose prompts all became <unk>)."""

import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from genmo_teacache.generate_cli import generate_command
from genmo_teacache.weights import WeightsError, check_model_dir


@pytest.fixture
def copy_of(tiny_model_dir, tmp_path):
    """A fresh copy of the tiny model to break."""
    dst = tmp_path / "model"
    shutil.copytree(tiny_model_dir, dst)
    return dst


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


BREAKAGES = {
    "no model dir": (lambda d: shutil.rmtree(d), "does not exist"),
    "model dir is a file": (lambda d: (shutil.rmtree(d), d.write_text("x")), "is a file"),
    "empty dir": (lambda d: [f.unlink() for f in d.iterdir() if f.is_file()], "has no decoder.safetensors"),
    "no spiece.model": (lambda d: (d / "text_encoder" / "spiece.model").unlink(), "<unk>"),
    "empty spiece.model": (lambda d: (d / "text_encoder" / "spiece.model").write_bytes(b""), "spiece.model"),
    "corrupt T5 config": (lambda d: (d / "text_encoder" / "config.json").write_text("{oops"),
                          "text_encoder/config.json is not valid JSON"),
    "no T5 config": (lambda d: (d / "text_encoder" / "config.json").unlink(), "text_encoder/config.json not found"),
    "no T5 weights": (lambda d: (d / "text_encoder" / "model.safetensors").unlink(), "the T5 weights"),
    "truncated T5 weights": (lambda d: truncate(d / "text_encoder" / "model.safetensors"),
                             "text_encoder/model.safetensors is truncated"),
    "corrupt decoder_config.json": (lambda d: (d / "decoder_config.json").write_text("[1,"),
                                    "decoder_config.json is not valid JSON"),
    "decoder_config.json not an object": (lambda d: (d / "decoder_config.json").write_text("[1]"),
                                          "decoder_config.json must hold a JSON object"),
    "truncated dit": (lambda d: truncate(d / "dit.safetensors", 0.9), "dit.safetensors is truncated"),
    "dit is not safetensors": (lambda d: (d / "dit.safetensors").write_bytes(b"hello"), "dit.safetensors is not"),
    "truncated decoder": (lambda d: truncate(d / "decoder.safetensors", 0.99), "decoder.safetensors is truncated"),
}


@pytest.mark.parametrize("name", list(BREAKAGES))
def test_broken_model_dirs_are_refused_naming_the_file(copy_of, name):
    breakage, message = BREAKAGES[name]
    breakage(copy_of)
    with pytest.raises(WeightsError, match=message.replace("<", "\\<")):
        check_model_dir(copy_of)


def test_the_intact_tiny_model_passes(tiny_model_dir):
    check_model_dir(tiny_model_dir)


def test_broken_loras_are_refused(copy_of, tmp_path):
    bad_pt = tmp_path / "lora.pt"
    bad_pt.write_bytes(b"not a pickle")
    with pytest.raises(WeightsError, match=f"LoRA {bad_pt} cannot be read"):
        check_model_dir(copy_of, lora_path=bad_pt)
    torch.save({"weights": 1}, bad_pt)
    with pytest.raises(WeightsError, match="lacks 'state_dict' and 'kwargs'"):
        check_model_dir(copy_of, lora_path=bad_pt)
    from safetensors.torch import save_file

    no_kwargs = tmp_path / "lora.safetensors"
    save_file({"a": torch.zeros(2)}, str(no_kwargs))
    with pytest.raises(WeightsError, match="no valid 'kwargs' metadata"):
        check_model_dir(copy_of, lora_path=no_kwargs)
    save_file({"a": torch.zeros(2)}, str(no_kwargs), metadata={"kwargs": json.dumps({"lora_rank": 4})})
    check_model_dir(copy_of, lora_path=no_kwargs)
    truncate(no_kwargs)
    with pytest.raises(WeightsError, match="lora.safetensors is"):
        check_model_dir(copy_of, lora_path=no_kwargs)


@pytest.mark.parametrize("name", ["no model dir", "no spiece.model", "truncated dit"])
def test_the_command_refuses_at_once(copy_of, name):
    breakage, message = BREAKAGES[name]
    breakage(copy_of)
    res = CliRunner().invoke(generate_command, ["--model_dir", str(copy_of), "--no_teacache", "--device", "cpu"])
    assert res.exit_code == 1 and message in res.output and "Traceback" not in res.output, res.output
    assert "Timing load" not in res.output  # refused before any model loads (after 8-14 s of loading before)
