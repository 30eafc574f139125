"""--low_memory (issue 23 section 2): the same latents as without it, conversion before placement, decoding in time
chunks, refusals before loading; the full-size random T5 (tiny overrides: the real one is 19 GB); the benchmark's
CPU run. Placement itself is a no-op on a CPU: bench/bench_low_memory.py measures it on a GPU."""

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from genmo_teacache.caches import parse_mode
from genmo_teacache.decoding import decode_in_time_chunks
from genmo_teacache.generate import GenerationSettings, generate, load_pipeline
from genmo_teacache.model import dit_parts
from genmo_teacache.pipelines import TeaCacheDitModelFactory, decoder_kwargs
from genmo_teacache.speed import FP8Linear, SpeedOptions, apply_speed_options, parse_speed
from genmo_teacache.tiny import T5_XXL_CONFIG, TINY_DECODER_KWARGS, TINY_DIT_KWARGS, make_tiny_model
from genmo_teacache.upstream import Decoder, decode_latents_tiled_spatial
from genmo_teacache.weights import RANDOM_WEIGHTS_KEY, check_model_dir

REPO = Path(__file__).resolve().parents[2]
SMALL = GenerationSettings(width=64, height=64, num_frames=31, num_steps=4)  # 6 latent frames: two decode chunks


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}


def test_conversion_part_by_part_on_a_device_gives_the_weights_of_converting_in_place(tiny_model_dir):
    """apply_speed_options(convert_on=...) moves each part (a block, or another top-level module) to the device,
    converts it and moves it back: the same weights, tensor for tensor, as converting the whole model where it is."""
    options = SpeedOptions(dit_dtype="bf16", fp8_mm=True)
    factory = TeaCacheDitModelFactory(model_path=str(tiny_model_dir / "dit.safetensors"), attention_mode="sdpa",
                                      model_kwargs=TINY_DIT_KWARGS)
    in_place = factory.get_model(local_rank=0, device_id="cpu", world_size=1)
    by_part = factory.get_model(local_rank=0, device_id="cpu", world_size=1)
    assert len(dit_parts(in_place)) == len(in_place.blocks) + 5
    apply_speed_options(in_place, options)
    apply_speed_options(by_part, options, convert_on=torch.device("cpu"))
    a, b = _state(in_place), _state(by_part)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    assert isinstance(by_part.blocks[0].mlp_x.w1, FP8Linear) and by_part.blocks[0].mod_x.weight.dtype == torch.bfloat16
    assert by_part.pos_frequencies.dtype == torch.float32  # as upstream's cast_dit: only Linear and Conv2d


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["default", "bf16+fp8_mm"])
def test_low_memory_gives_the_latents_of_the_plain_pipeline(tiny_model_dir, spec):
    """Conversion before placement, the phases' placement and chunked decoding change no latent; the frames differ
    at most by the chunked convolutions' rounding."""
    outs = {}
    for low_memory in (False, True):
        pipe = load_pipeline(tiny_model_dir, device="cpu", speed=parse_speed(spec), low_memory=low_memory)
        assert pipe.low_memory is low_memory and pipe.cpu_offload is low_memory
        outs[low_memory] = generate(pipe, prompt="a cat", cache=parse_mode("fixed_0.1"), seed=3, settings=SMALL,
                                    progress=False)
    assert torch.equal(outs[True].latents, outs[False].latents)
    assert outs[True].frames.shape == outs[False].frames.shape == (31, 64, 64, 3)
    assert abs(outs[True].frames - outs[False].frames).max() < 1e-5


@pytest.mark.slow
def test_decoding_in_time_chunks_is_decoding_in_one_pass():
    """Every causal convolution gets the previous chunk's last frames, only the first chunk drops the temporal
    upsampling's leading frames: same frames (to float rounding) for any chunk size, also inside spatial tiles."""
    torch.manual_seed(1)
    decoder = Decoder(**decoder_kwargs(TINY_DECODER_KWARGS)).eval()
    z = torch.randn(1, 12, 5, 4, 6)
    with torch.inference_mode():
        whole = decoder(z)
        for chunk in (1, 2, 5, 20):
            chunked = decode_in_time_chunks(decoder, z, chunk)
            assert chunked.shape == whole.shape == (1, 3, 25, 32, 48)
            assert (chunked - whole).abs().max() < 1e-5, chunk
        tiled = decode_latents_tiled_spatial(decoder, z, num_tiles_w=2, num_tiles_h=2, overlap=2)
        tiled_chunked = decode_latents_tiled_spatial(partial(decode_in_time_chunks, decoder, chunk=2), z,
                                                     num_tiles_w=2, num_tiles_h=2, overlap=2)
    assert (tiled_chunked - tiled).abs().max() < 1e-5
    assert not any("forward" in vars(m) for m in decoder.modules())  # the per-instance patches are gone
    with pytest.raises(ValueError, match="chunk=0"):
        decode_in_time_chunks(decoder, z, 0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_gpus=2), "--num_gpus 2 spreads them"),
    (dict(cfg_parallel=True, num_gpus=2), "--cfg_parallel"),
    (dict(speed=SpeedOptions(dit_dtype="bf16", fp8_linear=True)), "use fp8_mm instead"),
])
def test_bad_combinations_are_refused_naming_why_before_loading(tmp_path, kwargs, message):
    # an empty folder: anything that looked at the weights would fail differently
    with pytest.raises(ValueError, match=message):
        load_pipeline(tmp_path, device="cpu", low_memory=True, **kwargs)


def test_the_command_refuses_low_memory_with_several_gpus(tiny_model_dir):
    from genmo_teacache.generate_cli import generate_command

    res = CliRunner().invoke(generate_command, ["--model_dir", str(tiny_model_dir), "--device", "cpu",
                                                "--low_memory", "--num_gpus", "2"])
    assert res.exit_code != 0 and "--low_memory places the models of one GPU" in res.output


def test_full_size_random_model_dir_has_t5_xxl_and_no_weights(tmp_path):
    out = make_tiny_model(tmp_path / "m", full_size_random_dit=True, full_size_random_t5=True,
                          full_size_random_decoder=True)
    config = json.loads((out / "text_encoder" / "config.json").read_text())
    # google/t5-v1_1-xxl (its config.json on the Hugging Face hub)
    expected = dict(d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24, vocab_size=32128,
                    feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, layer_norm_epsilon=1e-6)
    assert {k: config[k] for k in expected} == expected and {k: T5_XXL_CONFIG[k] for k in expected} == expected
    assert config[RANDOM_WEIGHTS_KEY] is True and (out / "text_encoder" / "spiece.model").exists()
    for name in ("dit", "decoder"):
        assert json.loads((out / f"{name}_config.json").read_text()) == {RANDOM_WEIGHTS_KEY: True}
    assert not list(out.rglob("*.safetensors")) and not (out / "generation_defaults.json").exists()
    check_model_dir(out)  # no weights files needed where the config says random


@pytest.mark.slow
def test_random_t5_and_decoder_are_built_seeded_in_fp32_and_generate(tmp_path):
    """The random-weights path of each factory, with the architecture overridden to tiny sizes (T5-XXL would be
    19 GB): built from the config, fp32 (upstream's dtype), the same weights on every load, a whole generation."""
    out = make_tiny_model(tmp_path / "m", full_size_random_dit=True, full_size_random_t5=True,
                          full_size_random_decoder=True)
    config_path = out / "text_encoder" / "config.json"
    config = json.loads(config_path.read_text())
    config.update(vocab_size=320, d_ff=32, d_kv=16, num_heads=2, num_layers=2)  # d_model stays 4096 (Mochi's)
    config_path.write_text(json.dumps(config))
    (out / "dit_config.json").write_text(json.dumps({RANDOM_WEIGHTS_KEY: True, **TINY_DIT_KWARGS}))
    (out / "decoder_config.json").write_text(json.dumps({RANDOM_WEIGHTS_KEY: True, **TINY_DECODER_KWARGS}))
    runs = []
    for _ in range(2):
        pipe = load_pipeline(out, device="cpu", low_memory=True)
        t5 = pipe.text_encoder
        assert {p.dtype for p in t5.parameters()} == {torch.float32}
        assert len(t5.encoder.block) == 2 and t5.config.d_ff == 32 and t5.shared.num_embeddings == 320
        runs.append((_state(t5), _state(pipe.decoder), generate(pipe, prompt="a cat", cache=parse_mode("baseline"),
                                                                 seed=0, settings=SMALL, progress=False)))
    (t5_a, dec_a, gen_a), (t5_b, dec_b, gen_b) = runs
    assert all(torch.equal(t5_a[k], t5_b[k]) for k in t5_a) and all(torch.equal(dec_a[k], dec_b[k]) for k in dec_a)
    assert torch.equal(gen_a.latents, gen_b.latents) and gen_a.frames.shape == (31, 64, 64, 3)
    assert t5_a["encoder.block.0.layer.0.SelfAttention.q.weight"].std() > 0  # drawn, not left empty


@pytest.mark.slow
def test_benchmark_runs_on_cpu(tiny_model_dir, tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHONPATH": str(REPO / "src")}
    res = subprocess.run([sys.executable, str(REPO / "bench" / "bench_low_memory.py"), "--tiny", "--model_dir",
                          str(tiny_model_dir)], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    d = json.loads((tmp_path / "low_memory_31f.json").read_text())
    fields = {"frames", "steps", "memory_cap_gib", "peak_gib", "denoise_s", "total_s", "options"}
    assert fields | {"device", "without_option"} <= d.keys() and fields == d["without_option"].keys()
    assert d["options"]["low_memory"] is True and d["without_option"]["options"]["low_memory"] is False
    assert d["frames"] == 31 and d["steps"] == 4 and d["denoise_s"] > 0 and d["total_s"] >= d["denoise_s"]
    assert d["comparison"]["same_latents"] is True and d["details"]["with_option"]["computed_steps"] == 2
