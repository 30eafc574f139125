"""Speed options: validation, specs and presets, mode-name suffixes, refusals before any model loads, and what
can run on CPU for real (default options leave the DiT untouched; the FP8 attention's quantisation and layout)."""

import itertools
import sys
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from genmo_teacache import compat, speed
from genmo_teacache.speed import (
    PRESETS,
    SpeedOptionError,
    SpeedOptions,
    apply_speed_options,
    check_speed_options,
    join_mode,
    merge_speed,
    parse_speed,
    split_mode,
)


@pytest.mark.parametrize("kwargs, message", [
    (dict(dit_dtype="fp16"), "dit_dtype 'fp16'"),
    (dict(sdpa_backend="cuda"), "sdpa_backend 'cuda'"),
    (dict(attention_kernel="fa2"), "attention_kernel 'fa2'"),
    (dict(attention_kernel="fa3", sdpa_backend="cudnn"), "only applies to attention_kernel sdpa"),
    (dict(fp8_linear=True), "set dit_dtype bf16"),
])
def test_invalid_options_are_refused_with_the_value_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SpeedOptions(**kwargs)


def all_valid_options():
    for dtype, backend, comp, kernel, fp8 in itertools.product(
            ("fp32", "bf16"), ("auto", *speed.SDPA_BACKENDS), (False, True), speed.ATTENTION_KERNELS, (False, True)):
        try:
            yield SpeedOptions(dtype, backend, comp, kernel, fp8)
        except ValueError:
            continue


def test_every_valid_combination_round_trips_through_its_spec():
    options = list(all_valid_options())
    assert len(options) == 5 * 2 * 3 + 4 * 2 * 3  # (sdpa backends | other kernels) x compile x (fp32, bf16, bf16+fp8)
    specs = {o.spec() for o in options}
    assert len(specs) == len(options)  # canonical: one spec per combination
    for o in options:
        assert parse_speed(o.spec()) == o


def test_presets_are_named_by_their_spec_and_expand():
    for name, preset in PRESETS.items():
        assert preset.spec() == name and parse_speed(name) == preset
    assert PRESETS["default"].is_default
    fast = PRESETS["fast"]
    assert fast.dit_dtype == "bf16" and fast.compile and not fast.is_default


def test_spec_tokens_presets_and_overrides():
    assert parse_speed("bf16+compile") == SpeedOptions(dit_dtype="bf16", compile=True)
    assert parse_speed("compile+bf16") == parse_speed("bf16+compile")
    assert parse_speed("sdpa_flash") == SpeedOptions(sdpa_backend="flash")
    assert parse_speed("fast+sage") == replace(PRESETS["fast"], attention_kernel="sage")  # token after a preset
    assert parse_speed("bf16+fp8_linear").fp8_linear


@pytest.mark.parametrize("spec, message", [
    ("", "empty speed spec"),
    ("turbo", "unknown token 'turbo'"),
    ("fa3+sage", "'fa3' and 'sage' both set attention_kernel"),
    ("fp8_linear", "set dit_dtype bf16"),
    ("fa3+sdpa_cudnn", "only applies to attention_kernel sdpa"),
])
def test_bad_specs_are_refused(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_speed(spec)


def test_mode_names_carry_speed_options_and_round_trip():
    assert split_mode("fixed_0.04") == ("fixed_0.04", None)
    assert split_mode("fixed_0.04@fast") == ("fixed_0.04", PRESETS["fast"])
    assert split_mode("baseline@compile+bf16") == ("baseline", SpeedOptions(dit_dtype="bf16", compile=True))
    assert join_mode(*split_mode("baseline@compile+bf16")) == "baseline@bf16+compile"  # canonical form
    for o in all_valid_options():
        name = join_mode("adaptive_0.12_0.04", o)
        assert split_mode(name) == ("adaptive_0.12_0.04", o)
        assert join_mode(*split_mode(name)) == name
    assert join_mode("baseline", None) == "baseline"


@pytest.mark.parametrize("mode, message", [
    ("@fast", "nothing before '@'"),
    ("a@fast@bf16", "more than one '@'"),
    ("fixed_0.04@turbo", "mode 'fixed_0.04@turbo': speed spec 'turbo': unknown token"),
])
def test_bad_mode_suffixes_are_refused_with_the_mode_named(mode, message):
    with pytest.raises(ValueError, match=message):
        split_mode(mode)


def test_command_line_options_go_on_top_of_a_preset():
    assert merge_speed(None) == SpeedOptions()
    assert merge_speed(None, dit_dtype="bf16", compile=True) == SpeedOptions(dit_dtype="bf16", compile=True)
    assert merge_speed("fast_bf16", attention_kernel="sage") == replace(PRESETS["fast_bf16"], attention_kernel="sage")
    # options left at their defaults do not undo the preset
    assert merge_speed("fast", dit_dtype="fp32", compile=False, attention_kernel="sdpa") == PRESETS["fast"]
    with pytest.raises(TypeError, match="unknown speed options"):
        merge_speed(None, turbo=True)


@pytest.mark.parametrize("options", [SpeedOptions(attention_kernel=k) for k in ("fa3", "fa3_fp8", "fa4", "sage")]
                         + [SpeedOptions(dit_dtype="bf16", fp8_linear=True)])
def test_a_missing_kernel_package_is_named_with_its_install_command(options, monkeypatch):
    key = options.attention_kernel if options.attention_kernel != "sdpa" else "fp8_linear"
    monkeypatch.setitem(speed._PACKAGES, key, ("genmo_teacache_no_such_module", speed._PACKAGES[key][1]))
    with pytest.raises(SpeedOptionError, match=r"is not installed\): pip install"):
        check_speed_options(options, "cpu")


@pytest.mark.parametrize("key", ["fa3", "fa3_fp8", "fa4", "sage", "fp8_linear"])
def test_gpu_only_options_are_refused_on_cpu_even_when_installed(key, monkeypatch):
    monkeypatch.setitem(speed._PACKAGES, key, ("json", "-"))  # a module that is always there
    options = SpeedOptions(dit_dtype="bf16", fp8_linear=True) if key == "fp8_linear" else \
        SpeedOptions(attention_kernel=key)
    with pytest.raises(SpeedOptionError, match="runs on CUDA GPUs only.*the device is cpu"):
        check_speed_options(options, "cpu")


def test_cpu_options_pass_the_check():
    for o in (SpeedOptions(), SpeedOptions(dit_dtype="bf16", compile=True, sdpa_backend="math")):
        check_speed_options(o, "cpu")


def test_the_cli_refuses_a_kernel_before_any_model_loads(tiny_model_dir, monkeypatch):
    from genmo_teacache.generate_cli import generate_command

    monkeypatch.setitem(speed._PACKAGES, "fa3", ("genmo_teacache_no_such_module", "pip install fa3-fwd"))
    res = CliRunner().invoke(generate_command, ["--model_dir", str(tiny_model_dir), "--device", "cpu",
                                                "--prompt", "a cat", "--no_teacache", "--attention_kernel", "fa3"])
    assert res.exit_code != 0 and "pip install fa3-fwd" in res.output, res.output
    assert "Timing load_dit" not in res.output
    res = CliRunner().invoke(generate_command, ["--model_dir", str(tiny_model_dir), "--device", "cpu",
                                                "--prompt", "a cat", "--no_teacache", "--speed_preset", "turbo"])
    assert res.exit_code != 0 and "unknown token 'turbo'" in res.output, res.output


@pytest.fixture(scope="module")
def tiny_dit(tiny_model_dir):
    from genmo_teacache.pipelines import factories_for

    return factories_for(tiny_model_dir, attention_mode="sdpa")["dit_factory"]


def forward(dit):
    from genmo.mochi_preview.pipelines import compute_packed_indices

    g = torch.Generator().manual_seed(3)
    z = torch.randn(1, 12, 2, 8, 8, generator=g)
    y = torch.randn(1, 256, 4096, generator=g) * 0.1
    mask = torch.zeros(1, 256, dtype=torch.bool)
    mask[:, :5] = True
    packed = compute_packed_indices(torch.device("cpu"), mask, 2 * 8 * 8 // 4)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        return dit(z, torch.full([1], 0.6), [y], [mask], packed)


def test_default_options_leave_the_dit_untouched(tiny_dit):
    plain = tiny_dit.get_model(local_rank=0, device_id="cpu", world_size=1)
    patched = tiny_dit.get_model(local_rank=0, device_id="cpu", world_size=1)
    before = {k: v.clone() for k, v in patched.state_dict().items()}
    assert apply_speed_options(patched, SpeedOptions()) is patched
    assert all(torch.equal(before[k], v) and v.dtype == before[k].dtype for k, v in patched.state_dict().items())
    assert not any("sdpa_attention" in vars(b.attn) for b in patched.blocks)
    assert not any(hasattr(b, "_compiled_call_impl") and b._compiled_call_impl for b in patched.blocks)
    assert torch.equal(forward(plain), forward(patched))


def test_sdpa_backend_patches_per_instance_and_restores(tiny_dit):
    dit = tiny_dit.get_model(local_rank=0, device_id="cpu", world_size=1)
    other = tiny_dit.get_model(local_rank=0, device_id="cpu", world_size=1)
    reference = forward(dit)
    speed.set_attention(dit, "sdpa", "math")
    assert all("sdpa_attention" in vars(b.attn) for b in dit.blocks)
    assert not any("sdpa_attention" in vars(b.attn) for b in other.blocks)  # other models keep upstream's
    torch.testing.assert_close(forward(dit), reference, atol=0.05, rtol=0.05)
    speed.set_attention(dit)
    assert not any("sdpa_attention" in vars(b.attn) for b in dit.blocks)
    assert torch.equal(forward(dit), reference)


def test_fp8_per_head_quantisation_round_trip():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 50, 16, generator=g) * torch.tensor([0.1, 1.0, 30.0])[None, :, None, None]
    q, descale = speed.quantize_fp8_per_head(x)
    assert q.dtype == torch.float8_e4m3fn and descale.shape == (1, 3)
    assert q.float().abs().amax(dim=(2, 3)).max() <= speed.FP8_E4M3_MAX  # the largest value of a head fits
    back = q.float() * descale[:, :, None, None]
    rel = (back - x).norm() / x.norm()
    assert 0 < rel < 0.05  # e4m3: 3 mantissa bits, about 2-3% rms error per element


def test_smoothing_k_leaves_attention_unchanged():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 40, 16, generator=g, dtype=torch.float64) for _ in range(3))
    k = k + 3.0  # a large common offset, as real keys have
    torch.testing.assert_close(F.scaled_dot_product_attention(q, speed.smooth_k(k), v),
                               F.scaled_dot_product_attention(q, k, v))
    assert speed.smooth_k(k).abs().max() < k.abs().max()


def test_fp8_attention_plumbing_against_a_dequantising_reference_kernel():
    """The FA3 FP8 path with the kernel replaced by what it computes (dequantise, then exact attention in
    FlashAttention's (B, tokens, heads, dim) layout): transposes, descales and smoothing are right if the
    result is exact attention up to FP8 rounding."""
    def reference_kernel(q8, k8, v8, qd, kd, vd):
        deq = [(t.float() * d[:, None, :, None]).transpose(1, 2) for t, d in ((q8, qd), (k8, kd), (v8, vd))]
        return F.scaled_dot_product_attention(*deq).transpose(1, 2).to(torch.bfloat16)

    g = torch.Generator().manual_seed(2)
    # upstream's q, k, v: (B, heads, tokens, dim) views of a (tokens, heads, dim) tensor
    q, k, v = ((torch.randn(60, 4, 32, generator=g) * s).to(torch.bfloat16).permute(1, 0, 2)[None]
               for s in (1.0, 2.0, 1.0))
    k = k + 2.0
    exact = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    out = speed._fa3_fp8(reference_kernel, q, k, v)
    assert out.shape == q.shape and out.dtype == torch.bfloat16
    rel = (out.float() - exact).norm() / exact.norm()
    assert rel < 0.06, rel
    transposed = speed._fa3_fp8(lambda *a: reference_kernel(*a).transpose(1, 2).contiguous().transpose(1, 2),
                                q, k, v)
    assert torch.equal(transposed, out)


def test_flash_attn_4_alone_is_not_taken_for_flash_attn_2(tmp_path, monkeypatch):
    """flash-attn-4 installs flash_attn/cute/ without flash_attn/__init__.py (a namespace package): upstream's
    flash mode needs flash-attn 2's varlen function, so 'auto' must still pick sdpa."""
    from genmo_teacache.pipelines import resolve_attention_mode

    (tmp_path / "flash_attn" / "cute").mkdir(parents=True)
    (tmp_path / "flash_attn" / "cute" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "flash_attn", raising=False)
    assert compat.flash_attn2_available() is False
    assert resolve_attention_mode("auto") == "sdpa"
    (tmp_path / "flash_attn" / "__init__.py").write_text("flash_attn_varlen_func = None\n")
    monkeypatch.delitem(sys.modules, "flash_attn", raising=False)
    assert compat.flash_attn2_available() is True
    monkeypatch.delitem(sys.modules, "flash_attn", raising=False)
