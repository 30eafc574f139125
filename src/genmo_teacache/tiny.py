"""A tiny, randomly initialised Mochi model directory in the native layout, for the demo default and the tests.

    DIR/dit.safetensors            DiT weights (upstream AsymmDiTJoint, ~58 M parameters, 51 M of them the
                                   4096-wide text pooling that T5 features require)
    DIR/dit_config.json            constructor kwargs that differ from the full-size Mochi DiT
    DIR/decoder.safetensors        VAE decoder weights (upstream Decoder, 0.3 M parameters)
    DIR/decoder_config.json        constructor kwargs that differ from the full-size decoder
    DIR/text_encoder/              a 1-layer T5 encoder (d_model 4096, as Mochi asserts) and its tokenizer
    DIR/generation_defaults.json   small sizes the CLI uses unless told otherwise

It is UNTRAINED: it produces noise. It exists so the whole pipeline (text encoding, caching sampler, decoding,
video writing) runs on a CPU in seconds. Real weights have no config files and get the full architecture.

For GPU benchmarks, each model can instead be the full-size architecture with random weights made at load time
(``--full-size-random-dit``, ``--full-size-random-t5``, ``--full-size-random-decoder``): its config file holds
``weights.RANDOM_WEIGHTS_KEY`` and no weights file is written, so its memory and time are real and its output noise.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import click
import torch

from genmo_teacache.cachedir import cache_dir, file_lock
from genmo_teacache.weights import RANDOM_WEIGHTS_KEY

log = logging.getLogger(__name__)

TINY_DIT_KWARGS: dict[str, Any] = dict(
    depth=2,
    num_heads=4,
    hidden_size_x=128,
    hidden_size_y=64,
    mlp_ratio_x=96.0,  # upstream asserts hidden_size_x * mlp_ratio_x == 12288
    mlp_ratio_y=4.0,
)
TINY_DECODER_KWARGS: dict[str, Any] = dict(
    base_channels=32,
    channel_multipliers=[1, 1, 1, 1],
    num_res_blocks=[1, 1, 1, 1, 1],
)
TINY_GENERATION_DEFAULTS: dict[str, Any] = dict(width=128, height=128, num_frames=19, num_steps=16)
# google/t5-v1_1-xxl's encoder (the architecture fields of its config.json on the Hugging Face hub, which upstream's
# T5ModelFactory loads, in fp32): 4.76 B parameters, 17.7 GiB
T5_XXL_CONFIG: dict[str, Any] = dict(
    vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
    relative_attention_num_buckets=32, layer_norm_epsilon=1e-6, feed_forward_proj="gated-gelu",
    is_encoder_decoder=False, use_cache=False, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
)

_CORPUS = """\
A hand with delicate fingers picks up a bright yellow lemon from a wooden bowl filled with lemons and mint.
a person swimming in ocean. Close up of grapes on a rotating table. alley. In a still frame, a stop sign.
A person is riding a bike. A cat and a dog play in the garden under the warm light of a quiet afternoon.
The camera pans slowly over snowy mountains, rivers, forests, city streets at night, cars and trains.
Astronaut flying in space, 4k, high resolution, cinematic, zoom in. Vincent van Gogh style, oil painting.
0123456789 quick brown fox jumps over the lazy dog; QUICK BROWN FOX JUMPS OVER THE LAZY DOG!?,.-'"()
"""


def _write_text_encoder(out: Path, seed: int) -> None:
    import sentencepiece as spm
    from safetensors.torch import save_file
    from transformers import T5Config, T5EncoderModel

    out.mkdir(parents=True, exist_ok=True)
    model_file = out / "spiece.model"
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS.splitlines()),
        model_prefix=str(model_file.with_suffix("")),
        vocab_size=190,
        hard_vocab_limit=False,
        character_coverage=1.0,
        model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1,  # T5's special ids
        minloglevel=2,
    )
    model_file.with_suffix(".vocab").unlink(missing_ok=True)
    vocab = spm.SentencePieceProcessor(model_file=str(model_file)).get_piece_size() + 100  # + T5's extra ids
    config = T5Config(vocab_size=vocab, d_model=4096, d_kv=8, d_ff=16, num_layers=1, num_heads=1,
                      feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False,
                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    torch.manual_seed(seed)
    model = T5EncoderModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():  # keep activations small with d_model 4096
            p.mul_(0.05)
    config.save_pretrained(out)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}
    save_file(state, str(out / "model.safetensors"))  # embed_tokens is tied to "shared"


def make_tiny_model(out_dir: str | os.PathLike, seed: int = 0, overwrite: bool = False,
                    full_size_random_dit: bool = False, full_size_random_t5: bool = False,
                    full_size_random_decoder: bool = False) -> Path:
    """Write the tiny random model directory and return its path. ``full_size_random_dit`` (``_t5``,
    ``_decoder``): instead of the tiny DiT (text encoder, decoder), mark the directory so that the full-size one is
    built with random weights at load time (no weights written; for timing and measuring the memory of the real
    architecture). The text encoder keeps the tiny model's tokenizer (its ids are far below T5-XXL's vocabulary)."""
    from safetensors.torch import save_file

    from genmo_teacache.model import AsymmDiTJoint, init_random_dit
    from genmo_teacache.pipelines import decoder_kwargs, dit_kwargs

    out = Path(out_dir)
    if (out / "decoder.safetensors").exists() and not overwrite:
        raise FileExistsError(f"{out} already holds a model; pass overwrite=True (--overwrite) to replace it")
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(seed)
    dit = init_random_dit(AsymmDiTJoint(**dit_kwargs(TINY_DIT_KWARGS, attention_mode="sdpa")), seed)
    save_file({k: v.contiguous() for k, v in dit.state_dict().items()}, str(out / "dit.safetensors"))
    (out / "dit_config.json").write_text(json.dumps(TINY_DIT_KWARGS, indent=2) + "\n")

    from genmo_teacache.upstream import Decoder

    torch.manual_seed(seed + 1)
    decoder = Decoder(**decoder_kwargs(TINY_DECODER_KWARGS))
    save_file({k: v.contiguous() for k, v in decoder.state_dict().items()}, str(out / "decoder.safetensors"))
    (out / "decoder_config.json").write_text(json.dumps(TINY_DECODER_KWARGS, indent=2) + "\n")

    _write_text_encoder(out / "text_encoder", seed)
    (out / "generation_defaults.json").write_text(json.dumps(TINY_GENERATION_DEFAULTS, indent=2) + "\n")
    random = {name: flag for name, flag in (("dit", full_size_random_dit), ("decoder", full_size_random_decoder))}
    for name in (n for n, flag in random.items() if flag):
        (out / f"{name}.safetensors").unlink()
        (out / f"{name}_config.json").write_text(json.dumps({RANDOM_WEIGHTS_KEY: True}, indent=2) + "\n")
    if full_size_random_t5:
        from transformers import T5Config

        (out / "text_encoder" / "model.safetensors").unlink()
        T5Config(**T5_XXL_CONFIG, **{RANDOM_WEIGHTS_KEY: True}).save_pretrained(out / "text_encoder")
    if full_size_random_dit or full_size_random_t5 or full_size_random_decoder:
        (out / "generation_defaults.json").unlink()  # full-size models: upstream's sizes
    (out / "README.txt").write_text(
        "Tiny randomly initialised Mochi model written by `genmo-teacache make-tiny-model`.\n"
        "It is UNTRAINED and produces noise: it exists to run the pipeline end to end on a CPU.\n"
    )
    return out


TINY_TEXT_ENCODER = 1  # version of _write_text_encoder's recipe: raise it when that code changes
# The demo default's folder in the cache is named after what it is made from, so that a cache made by another
# version of the recipe is never taken for this one (it is made again, in its own folder).
DEMO_MODEL = "tiny_model-" + hashlib.sha256(json.dumps(
    [TINY_DIT_KWARGS, TINY_DECODER_KWARGS, TINY_GENERATION_DEFAULTS, TINY_TEXT_ENCODER], sort_keys=True,
    default=str).encode()).hexdigest()[:10]


def default_model_dir() -> Path:
    """The tiny random demo model in the user cache folder, made on first use (atomically: a run killed while
    making it leaves nothing that looks finished) and reused afterwards."""
    root = cache_dir()
    path = root / DEMO_MODEL
    with file_lock(root / f"{DEMO_MODEL}.lock"):
        if not (path / "README.txt").exists():
            log.info("making the tiny demo model in %s (once; about 10 s)", path)
            tmp = Path(tempfile.mkdtemp(prefix=f".{DEMO_MODEL}-", dir=root))
            make_tiny_model(tmp, overwrite=True)
            shutil.rmtree(path, ignore_errors=True)
            tmp.rename(path)
    log.warning("No --model_dir: using the tiny RANDOM demo model in %s. It is untrained and makes noise; for real "
                "videos pass --model_dir WEIGHTS (a Mochi 1 weights directory, see the README).", path)
    return path


@click.command("make-tiny-model")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--seed", default=0, show_default=True, help="Seed of the random initialisation.")
@click.option("--overwrite", is_flag=True, help="Replace a model already in OUT_DIR.")
@click.option("--full-size-random-dit", "full_size_random_dit", is_flag=True,
              help="For GPU timing: the full-size DiT (10 B parameters) with random weights made at load time, "
                   "with the tiny text encoder and decoder unless the flags below are given too.")
@click.option("--full-size-random-t5", "full_size_random_t5", is_flag=True,
              help="For GPU timing and memory: the full-size T5-XXL text encoder (4.8 B parameters, fp32 as upstream "
                   "loads it) with random weights made at load time; the tiny tokenizer.")
@click.option("--full-size-random-decoder", "full_size_random_decoder", is_flag=True,
              help="For GPU timing and memory: the full-size VAE decoder (0.36 B parameters) with random weights "
                   "made at load time.")
def make_tiny_model_command(out_dir: str, seed: int, overwrite: bool, full_size_random_dit: bool,
                            full_size_random_t5: bool, full_size_random_decoder: bool) -> None:
    """Write a tiny random (untrained: it makes noise) model directory usable as --model_dir on a CPU."""
    try:
        path = make_tiny_model(out_dir, seed=seed, overwrite=overwrite, full_size_random_dit=full_size_random_dit,
                               full_size_random_t5=full_size_random_t5,
                               full_size_random_decoder=full_size_random_decoder)
    except FileExistsError as e:
        raise click.ClickException(str(e)) from None
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6
    click.echo(f"Tiny random model written to {path} ({size:.0f} MB). It is untrained and produces noise.")
