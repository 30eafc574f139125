"""Speed options: validation, specs and presets, mode-name suffixes, refusals before any model loads, and what
can run on CPU for real (default options leave the DiT untouched; the FP8 attention's quantisation and layout)."""

import dataclasses
import itertools
import json
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
    (dict(fp8_mm=True), "set dit_dtype bf16"),
    (dict(dit_dtype="bf16", fp8_mm=True, fp8_linear=True), "keep one"),
])
def test_invalid_options_are_refused_with_the_value_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SpeedOptions(**kwargs)


def all_valid_options():
    for dtype, backend, comp, kernel, fp8, fp8_mm in itertools.product(
            ("fp32", "bf16"), ("auto", *speed.SDPA_BACKENDS), (False, True), speed.ATTENTION_KERNELS, (False, True),
            (False, True)):
        try:
            yield SpeedOptions(dtype, backend, comp, kernel, fp8, fp8_mm)
        except ValueError:
            continue


def test_every_valid_combination_round_trips_through_its_spec():
    options = list(all_valid_options())
    # (sdpa backends | other kernels) x compile x (fp32, bf16, bf16+fp8_linear, bf16+fp8_mm)
    assert len(options) == 5 * 2 * 4 + 4 * 2 * 4
    specs = {o.spec() for o in options}
    assert len(specs) == len(options)  # canonical: one spec per combination
    for o in options:
        assert parse_speed(o.spec()) == o


def test_presets_are_named_by_their_spec_and_expand():
    for name, preset in PRESETS.items():
        assert preset.spec() == name and parse_speed(name) == preset
    assert PRESETS["default"].is_default
    fast = PRESETS["fast"]
    assert fast.dit_dtype == "bf16" and fast.compile_dit and not fast.is_default


def test_spec_tokens_presets_and_overrides():
    assert parse_speed("bf16+compile") == SpeedOptions(dit_dtype="bf16", compile_dit=True)
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
    assert split_mode("baseline@compile+bf16") == ("baseline", SpeedOptions(dit_dtype="bf16", compile_dit=True))
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
    assert merge_speed(None, dit_dtype="bf16", compile_dit=True) == SpeedOptions(dit_dtype="bf16", compile_dit=True)
    assert merge_speed("fast_bf16", attention_kernel="sage") == replace(PRESETS["fast_bf16"], attention_kernel="sage")
    # options left at their defaults do not undo the preset
    assert merge_speed("fast", dit_dtype="fp32", compile_dit=False, attention_kernel="sdpa") == PRESETS["fast"]
    with pytest.raises(TypeError, match="unknown speed options"):
        merge_speed(None, turbo=True)


def setting(name: str) -> SpeedOptions:
    """Valid options in which the field ``name`` differs from its default: a spec token, alone or after bf16."""
    tokens = (*speed._TOKENS, *speed.PATTERN_EXAMPLES)
    for spec in (*tokens, *(f"bf16+{t}" for t in tokens)):
        try:
            options = parse_speed(spec)
        except ValueError:
            continue
        if getattr(options, name) != getattr(SpeedOptions(), name):
            return options
    raise AssertionError(f"no spec token sets {name}: add one to speed._TOKENS")


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(SpeedOptions)])
def test_every_speed_option_is_reachable_from_the_command_line_and_recorded(name, tmp_path):
    """For every field of SpeedOptions (whatever it is called): a valid set of options in which it differs from its
    default (a spec token, alone or after bf16), written as command-line flags named after the fields, comes out of
    the command line as that one object (with and without a preset under it), and the fingerprint records the
    field."""
    from genmo_teacache.batch.cli import batch_command
    from genmo_teacache.batch.fingerprint import pipeline_fingerprint
    from genmo_teacache.generate_cli import generate_command
    from genmo_teacache.options import pipeline_kwargs

    options = setting(name)
    flags = []
    for f in dataclasses.fields(SpeedOptions):
        value = getattr(options, f.name)
        if value != getattr(SpeedOptions(), f.name):
            flags += [f"--{f.name}"] if isinstance(value, bool) else [f"--{f.name}", str(value)]
    for command in (generate_command, batch_command):
        params = command.make_context(command.name, list(flags)).params
        assert pipeline_kwargs(params)["speed"] == options, (command.name, flags)
        preset = command.make_context(command.name, ["--speed_preset", "default", *flags]).params
        assert pipeline_kwargs(preset)["speed"] == options
    fingerprint, _ = pipeline_fingerprint(tmp_path, pipeline_kwargs(params), gpu=False)
    assert fingerprint[name] == getattr(options, name) and fingerprint["speed"] == options.spec()


def test_fingerprints_of_earlier_versions_still_compare():
    from genmo_teacache.batch.fingerprint import differences, speed_fingerprint

    now = speed_fingerprint(parse_speed("bf16"))
    before_fp8_mm = {"speed": "bf16", "dit_dtype": "bf16", "sdpa_backend": "auto", "compile_dit": False,
                     "attention_kernel": "sdpa", "fp8_linear": False}  # the keys as earlier reports wrote them
    assert differences(before_fp8_mm, now) == [] and differences({"speed": "bf16", "dit_dtype": "bf16"}, now) == []
    assert differences({**before_fp8_mm, "compile_dit": True}, now) == ["compile_dit True != False"]


@pytest.mark.parametrize("options", [SpeedOptions(attention_kernel=k) for k in ("fa3", "fa3_fp8", "fa4", "sage")]
                         + [SpeedOptions(dit_dtype="bf16", fp8_linear=True)])
def test_a_missing_kernel_package_is_named_with_its_install_command(options, monkeypatch):
    key = options.attention_kernel if options.attention_kernel != "sdpa" else "fp8_linear"
    monkeypatch.setitem(speed._PACKAGES, key, ("genmo_teacache_no_such_module", speed._PACKAGES[key][1]))
    with pytest.raises(SpeedOptionError, match=r"is not installed\): pip install"):
        check_speed_options(options, "cuda:0")  # the package is checked before the GPU is queried
    with pytest.raises(SpeedOptionError, match="needs a CUDA GPU.*the device is cpu") as e:
        check_speed_options(options, "cpu")  # on a CPU no package helps: the device is named first
    assert "pip install" not in str(e.value)


@pytest.mark.parametrize("key", ["fa3", "fa3_fp8", "fa4", "sage", "fp8_linear"])
def test_gpu_only_options_are_refused_on_cpu_even_when_installed(key, monkeypatch):
    monkeypatch.setitem(speed._PACKAGES, key, ("json", "-"))  # a module that is always there
    options = SpeedOptions(dit_dtype="bf16", fp8_linear=True) if key == "fp8_linear" else \
        SpeedOptions(attention_kernel=key)
    with pytest.raises(SpeedOptionError, match="needs a CUDA GPU.*the device is cpu"):
        check_speed_options(options, "cpu")


def test_cpu_options_pass_the_check():
    for o in (SpeedOptions(), SpeedOptions(dit_dtype="bf16", compile_dit=True, sdpa_backend="math")):
        check_speed_options(o, "cpu")


def test_the_cli_refuses_a_kernel_before_any_model_loads(tiny_model_dir, monkeypatch):
    from genmo_teacache.generate_cli import generate_command

    monkeypatch.setitem(speed._PACKAGES, "fa3", ("genmo_teacache_no_such_module", "pip install fa3-fwd"))
    res = CliRunner().invoke(generate_command, ["--model_dir", str(tiny_model_dir), "--device", "cpu",
                                                "--prompt", "a cat", "--no_teacache", "--attention_kernel", "fa3"])
    assert res.exit_code != 0 and "needs a CUDA GPU" in res.output, res.output
    assert "Timing load_dit" not in res.output
    for preset in ("fast", "fastest"):  # a preset on a CPU: a GPU is needed, not a package
        res = CliRunner().invoke(generate_command, ["--model_dir", str(tiny_model_dir), "--device", "cpu",
                                                    "--prompt", "a cat", "--no_teacache", "--speed_preset", preset])
        assert res.exit_code != 0 and "needs a CUDA GPU" in res.output and "pip install" not in res.output
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


def test_fp8_mm_linear_is_the_scaled_product_of_its_quantised_rows():
    """FP8Linear on the CPU's torch._scaled_mm: the product of the e4m3 rows times both scales, plus the bias;
    each row's scale maps its largest value to e4m3's largest; the result stays near the bf16 layer's."""
    g = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(64, 48).to(torch.bfloat16)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(48, 64, generator=g) * torch.linspace(0.1, 3.0, 48)[:, None])
        linear.bias.copy_(torch.randn(48, generator=g))
    x = (torch.randn(3, 5, 64, generator=g) * torch.linspace(0.01, 10.0, 5)[:, None]).to(torch.bfloat16)
    fp8 = speed.FP8Linear(linear)
    y = fp8(x)
    assert y.shape == (3, 5, 48) and y.dtype == torch.bfloat16
    assert fp8.weight.dtype == torch.float8_e4m3fn and fp8.weight_scale.shape == (1, 48)

    xq, xs = speed.FP8Linear.quantize(x.reshape(15, 64))
    wq, ws = speed.FP8Linear.quantize(linear.weight)
    assert torch.equal(xq.float().abs().amax(dim=1), torch.full([15], 448.0))  # every row uses e4m3's range
    assert torch.equal(wq, fp8.weight) and torch.equal(ws.t(), fp8.weight_scale)
    assert ((xq.float() * xs - x.reshape(15, 64).float()).abs() <= x.reshape(15, 64).float().abs() / 16 + 1e-6).all()
    product = ((xq.float() * xs) @ (wq.float() * ws).t()).to(torch.bfloat16) + linear.bias
    torch.testing.assert_close(y.reshape(15, 48), product, rtol=2 ** -7, atol=1e-3)
    exact = linear(x).float()
    assert ((y.float() - exact).norm() / exact.norm()) < 0.05


def test_fp8_mm_replaces_the_visual_linears_keeps_lora_ones_and_restores(tiny_dit):
    dit = tiny_dit.get_model(local_rank=0, device_id="cpu", world_size=1)
    check_speed_options(SpeedOptions(dit_dtype="bf16", fp8_mm=True), "cpu")  # the probe runs on this CPU
    apply_speed_options(dit, SpeedOptions(dit_dtype="bf16"))
    reference = forward(dit)
    dit.blocks[1].attn.qkv_x.r = 4  # as a LoraLinear with an adapter: its LoRA update is not in the weight
    originals = {(i, n): b.get_submodule(n) for i, b in enumerate(dit.blocks) for n in speed.FP8_LINEARS}
    replaced = speed.use_fp8_mm(dit)
    assert set(replaced) == set(originals) - {(1, "attn.qkv_x")}
    for (i, name), module in originals.items():
        now = dit.blocks[i].get_submodule(name)
        assert (now is module) if (i, name) == (1, "attn.qkv_x") else isinstance(now, speed.FP8Linear)
    out = forward(dit)
    assert ((out.float() - reference.float()).norm() / reference.float().norm()) < 0.1
    speed.restore_linears(dit, replaced)
    assert all(dit.blocks[i].get_submodule(n) is m for (i, n), m in originals.items())
    assert torch.equal(forward(dit), reference)


def test_fp8_mm_through_generate(tiny_model_dir, tmp_path):
    from genmo_teacache.generate_cli import generate_command

    res = CliRunner().invoke(generate_command, [
        "--model_dir", str(tiny_model_dir), "--device", "cpu", "--prompt", "a cat", "--no_teacache",
        "--num_steps", "2", "--dit_dtype", "bf16", "--fp8_mm", "--save_file", str(tmp_path / "v.mp4")])
    assert res.exit_code == 0, res.output
    sidecar = json.loads((tmp_path / "v.json").read_text())
    assert sidecar["arguments"]["fp8_mm"] is True and sidecar["frames"][0] == 19
