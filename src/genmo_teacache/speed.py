"""Speed options for the DiT, off by default (upstream's behaviour). docs/BENCHMARKS.md reports what each buys
and how far it moves the outputs.

- ``dit_dtype="bf16"``: store the DiT's linear and conv weights in bf16 (upstream keeps fp32 weights and casts
  them under autocast on every call): 18.7 GiB less memory at full size, same output bit for bit. Norm weights
  and RoPE frequencies stay fp32. Single-GPU only (FSDP keeps fp32 parameters).
- ``sdpa_backend``: the SDPA kernel for the visual/text attention (``attention_kernel="sdpa"``). Upstream lets
  PyTorch choose among flash, memory-efficient and (on Hopper) cuDNN; ``"cudnn"``, ``"flash"``,
  ``"efficient"`` or ``"math"`` force one.
- ``attention_kernel``: another kernel for the joint attention of every block, each from its own package:
  ``"fa3"`` FlashAttention-3 (PyPI ``fa3-fwd``, Hopper), ``"fa3_fp8"`` the same kernel on FP8 (e4m3) inputs
  with per-head scales and K smoothed by its mean over tokens (exact for softmax), ``"fa4"`` FlashAttention-4
  (PyPI ``flash-attn-4``, CuTeDSL; Hopper and Blackwell), ``"sage"`` SageAttention's ``sageattn`` (PyPI
  ``sageattention`` is the Triton 1.x; a built 2.x installs under the same name and is used the same way).
- ``fp8_linear``: the visual stream's big linear layers (QKV, output projection, both SwiGLU matrices) in FP8
  through torchao (dynamic per-row scaled activations and weights). Needs bf16 weights and a GPU of compute
  capability 8.9 or newer.
- ``fp8_mm``: the same layers in FP8 without torchao (:class:`FP8Linear`): e4m3 weights with one scale per output
  channel, activations quantised per token on every call, multiplied by ``torch._scaled_mm``; the quantisation
  is plain tensor code that ``compile_dit`` fuses. Needs bf16 weights; checked by a small product on the device.
- ``compile_dit``: ``torch.compile`` each transformer block (upstream's COMPILE_DIT switch, per instance).

Options are written as a spec, ``"+"``-joined tokens (``"bf16+fa3_fp8+compile"``) or a preset name
(``PRESETS``): the same string names them on the command line and after ``@`` in a mode name
(``fixed_0.04@fast``), see :func:`split_mode`.

One :class:`SpeedOptions` travels from the command line to the DiT: each field is the command-line option of
the same name (``--dit_dtype``, ``--compile_dit``, ...), :func:`speed_from_options` merges them with
``--speed_preset``, ``generate.load_pipeline(..., speed=...)`` takes the object, batch's plan and the fingerprint
(:meth:`SpeedOptions.record`) carry it, and :func:`apply_speed_options` applies it. Adding an option touches this
module (the field, its check in ``__post_init__``, its spec token in ``spec`` and ``_TOKENS``, what applies it) and
its click declaration in ``options.generation_options``, nothing else: tests/core/test_speed.py checks that every
field is reachable from the command line and recorded in the fingerprint.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

log = logging.getLogger(__name__)

SDPA_BACKENDS = {
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}
ATTENTION_KERNELS = ("sdpa", "fa3", "fa3_fp8", "fa4", "sage")
# the visual stream's linears in each block (the text stream's are ~0.6% of the FLOPs and stay bf16)
FP8_LINEARS = ("attn.qkv_x", "attn.proj_x", "mlp_x.w1", "mlp_x.w2")
FP8_E4M3_MAX = 448.0


class SpeedOptionError(ValueError):
    """A speed option this machine cannot run (missing package, wrong device): raised before any model loads."""


@dataclass(frozen=True)
class SpeedOptions:
    dit_dtype: str = "fp32"
    sdpa_backend: str = "auto"
    compile_dit: bool = False
    attention_kernel: str = "sdpa"
    fp8_linear: bool = False
    fp8_mm: bool = False
    sparse_attention: str = "none"  # a sparse-attention token (genmo_teacache.sparse: sparse_tile_0.17, ...) or none

    def __post_init__(self) -> None:
        if self.sparse_attention != "none":  # canonical token (sparse_tile_.17 -> sparse_tile_0.17), or ValueError
            config = sparse_config(self.sparse_attention)
            if config is None:
                raise ValueError(f"sparse_attention {self.sparse_attention!r}: use none or " + sparse_syntax())
            object.__setattr__(self, "sparse_attention", config.token)
        if self.dit_dtype not in ("fp32", "bf16"):
            raise ValueError(f"dit_dtype {self.dit_dtype!r}: use fp32 (upstream) or bf16")
        if self.sdpa_backend not in ("auto", *SDPA_BACKENDS):
            raise ValueError(f"sdpa_backend {self.sdpa_backend!r}: use auto, {', '.join(SDPA_BACKENDS)}")
        if self.attention_kernel not in ATTENTION_KERNELS:
            raise ValueError(f"attention_kernel {self.attention_kernel!r}: use {', '.join(ATTENTION_KERNELS)}")
        if self.sdpa_backend != "auto" and self.attention_kernel != "sdpa":
            raise ValueError(f"sdpa_backend {self.sdpa_backend!r} only applies to attention_kernel sdpa, not "
                             f"{self.attention_kernel!r}: leave sdpa_backend at auto")
        if self.fp8_linear and self.dit_dtype != "bf16":
            raise ValueError("fp8_linear quantizes bf16 weights: set dit_dtype bf16 as well")
        if self.fp8_mm and self.dit_dtype != "bf16":
            raise ValueError("fp8_mm quantizes bf16 weights: set dit_dtype bf16 as well")
        if self.fp8_mm and self.fp8_linear:
            raise ValueError("fp8_mm and fp8_linear both put the same linear layers in FP8: keep one")

    @property
    def is_default(self) -> bool:
        return self == SpeedOptions()

    def spec(self) -> str:
        """The canonical spec: a preset's name when the options are exactly a preset's, else the tokens in a
        fixed order (``"bf16+fa3_fp8+fp8_linear+compile"``). ``parse_speed(o.spec()) == o`` for every ``o``."""
        for name, preset in PRESETS.items():
            if preset == self:
                return name
        tokens = ["bf16"] if self.dit_dtype == "bf16" else []
        if self.sdpa_backend != "auto":
            tokens.append(f"sdpa_{self.sdpa_backend}")
        if self.attention_kernel != "sdpa":
            tokens.append(self.attention_kernel)
        if self.fp8_linear:
            tokens.append("fp8_linear")
        if self.fp8_mm:
            tokens.append("fp8_mm")
        if self.compile_dit:
            tokens.append("compile")
        if self.sparse_attention != "none":
            tokens.append(self.sparse_attention)
        return "+".join(tokens)

    @property
    def sparse(self) -> Any:
        """The sparse-attention config (``genmo_teacache.sparse.SparseConfig``), or None."""
        return sparse_config(self.sparse_attention) if self.sparse_attention != "none" else None

    def record(self) -> dict[str, Any]:
        """``{"speed": spec, <every field>: value}``: what fingerprints and sidecars record."""
        return {"speed": self.spec(), **asdict(self)}


# tokens written as patterns rather than listed in _TOKENS, one example each (help texts, tests)
PATTERN_EXAMPLES = ("sparse_tile_0.17", "sparse_heads_0.17_w6", "sparse_topk_0.5")


def sparse_config(token: str) -> Any:
    from genmo_teacache.sparse import parse_sparse

    return parse_sparse(token)


def sparse_syntax() -> str:
    from genmo_teacache.sparse import SPARSE_METHODS

    return " or ".join(m.syntax() for m in SPARSE_METHODS)


SPEED_FIELDS = tuple(f.name for f in fields(SpeedOptions))  # each one also the name of its command-line option


# Named combinations, from docs/BENCHMARKS.md section 3 (H200, 163 frames, one forward; upstream's default
# 3.55-3.57 s): "fastest" is the fastest measured combination (1.99 s, 1.80x: FP8 attention and FP8 linears; its
# latents after 8 steps move twice as far from upstream's as between two exact kernels); "fast" FP8 attention only
# (2.24 s, 1.58-1.60x; FP8 attention moves a forward's output about 7x as far as switching between two exact
# kernels does); "fast_bf16" the fastest that keeps attention and matmuls in bf16 (2.61 s, 1.36x; output as close
# as bf16 weights + compile alone).
PRESETS: dict[str, SpeedOptions] = {
    "default": SpeedOptions(),
    "fastest": SpeedOptions(dit_dtype="bf16", compile_dit=True, attention_kernel="fa3_fp8", fp8_mm=True),
    "fast": SpeedOptions(dit_dtype="bf16", compile_dit=True, attention_kernel="fa3_fp8"),
    "fast_bf16": SpeedOptions(dit_dtype="bf16", compile_dit=True, attention_kernel="fa3"),
}

# token -> the fields it sets
_TOKENS: dict[str, dict[str, object]] = {
    "fp32": {"dit_dtype": "fp32"},
    "bf16": {"dit_dtype": "bf16"},
    "compile": {"compile_dit": True},
    "fp8_linear": {"fp8_linear": True},
    "fp8_mm": {"fp8_mm": True},
    **{f"sdpa_{b}": {"sdpa_backend": b} for b in SDPA_BACKENDS},
    **{k: {"attention_kernel": k} for k in ATTENTION_KERNELS},
}


def parse_speed(spec: str) -> SpeedOptions:
    """``"fast"``, ``"bf16+compile"``, ``"fast+sage"``: presets and tokens joined by ``+``, applied left to right
    (a token after a preset overrides that preset's field). Two tokens setting one field differently is an
    error, as is an unknown token."""
    if not spec or not spec.strip():
        raise ValueError("empty speed spec: use a preset (" + ", ".join(PRESETS) + ") or tokens joined by +")
    values = asdict(SpeedOptions())
    explicit: dict[str, str] = {}
    for token in spec.strip().split("+"):
        if token in PRESETS:
            values = asdict(PRESETS[token])
            explicit.clear()
            continue
        try:
            sparse = sparse_config(token)  # sparse_tile_<density>[_w<steps>], ...: a pattern, not a fixed token
        except ValueError as e:
            raise ValueError(f"speed spec {spec!r}: {e}") from None
        if token not in _TOKENS and sparse is None:
            raise ValueError(f"speed spec {spec!r}: unknown token {token!r}; use a preset ({', '.join(PRESETS)}), "
                             f"{', '.join(_TOKENS)} or a sparse attention ({sparse_syntax()})")
        for field_name, value in (_TOKENS.get(token) or {"sparse_attention": sparse.token}).items():
            if field_name in explicit and values[field_name] != value:
                raise ValueError(f"speed spec {spec!r}: {explicit[field_name]!r} and {token!r} both set "
                                 f"{field_name}: keep one")
            values[field_name] = value
            explicit[field_name] = token
    return SpeedOptions(**values)


def merge_speed(preset: str | None, **options: object) -> SpeedOptions:
    """The options of a command line: ``preset`` (a spec, see :func:`parse_speed`) with the explicitly given
    options on top. An option left at its default value (or None) does not override the preset."""
    defaults = asdict(SpeedOptions())
    unknown = set(options) - set(defaults)
    if unknown:
        raise TypeError(f"unknown speed options {sorted(unknown)}")
    base = asdict(parse_speed(preset)) if preset else defaults
    base.update({k: v for k, v in options.items() if v is not None and v != defaults[k]})
    return SpeedOptions(**base)


PRESET_OPTION = "speed_preset"  # the command-line option naming a preset or spec; the others are the fields


def speed_from_options(options: Mapping[str, Any]) -> SpeedOptions:
    """The speed options a command line gives (click's keyword arguments, or any mapping with the same keys):
    ``speed_preset`` with the fields given on top (:func:`merge_speed`); other keys are ignored. Raises ValueError
    naming a bad preset or combination."""
    return merge_speed(options.get(PRESET_OPTION), **{k: options.get(k) for k in SPEED_FIELDS})


MODE_SEPARATOR = "@"


def split_mode(mode: str) -> tuple[str, SpeedOptions | None]:
    """A mode name with speed options: ``"fixed_0.04@fast"`` -> ("fixed_0.04", PRESETS["fast"]);
    ``"baseline@bf16+compile"`` -> ("baseline", SpeedOptions(dit_dtype="bf16", compile_dit=True));
    ``"fixed_0.04"`` -> ("fixed_0.04", None) (the run's own options apply)."""
    base, sep, spec = mode.partition(MODE_SEPARATOR)
    if not sep:
        return mode, None
    if not base:
        raise ValueError(f"mode {mode!r}: nothing before {MODE_SEPARATOR!r}; write MODE@SPEED, e.g. baseline@fast")
    if MODE_SEPARATOR in spec:
        raise ValueError(f"mode {mode!r}: more than one {MODE_SEPARATOR!r}")
    try:
        return base, parse_speed(spec)
    except ValueError as e:
        raise ValueError(f"mode {mode!r}: {e}") from None


def join_mode(base: str, options: SpeedOptions | None) -> str:
    """The inverse of :func:`split_mode`: ``join_mode(*split_mode(m))`` is ``m`` in canonical form."""
    if MODE_SEPARATOR in base:
        raise ValueError(f"mode {base!r} already has {MODE_SEPARATOR!r}")
    return base if options is None else f"{base}{MODE_SEPARATOR}{options.spec()}"


# -- what each option needs, checked before any model loads ---------------------------------------------------

_PACKAGES = {  # option -> (module to find, how to install)
    "fa3": ("fa3_fwd_interface", "pip install fa3-fwd"),
    "fa3_fp8": ("fa3_fwd_interface", "pip install fa3-fwd"),
    "fa4": ("flash_attn.cute", "pip install flash-attn-4 nvidia-cutlass-dsl-libs-cu13 (or -cu12 to match torch)"),
    "sage": ("sageattention", "pip install sageattention (Triton 1.x), or build SageAttention 2.x from source"),
    "fp8_linear": ("torchao", "pip install torchao"),
}
_MIN_CAPABILITY = {"fa3": (9, 0), "fa3_fp8": (9, 0), "fa4": (9, 0), "sage": (8, 0), "fp8_linear": (8, 9)}
_MAX_MAJOR = {"fa3": 9, "fa3_fp8": 9}  # FA3 is Hopper-only
_WHAT = {"fa3": "FlashAttention-3", "fa3_fp8": "FlashAttention-3 FP8", "fa4": "FlashAttention-4",
         "sage": "SageAttention", "fp8_linear": "torchao FP8 linear layers"}


def _module_found(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package that is missing or broken
        return False


def check_speed_options(options: SpeedOptions, device: torch.device | str) -> None:
    """Raise :class:`SpeedOptionError` naming the device needed or the package to install (in that order: on a CPU
    no package helps), for any option that cannot run here. Call before loading a model."""
    device = torch.device(device)
    wanted = [k for k in (options.attention_kernel, "fp8_linear" if options.fp8_linear else None) if k in _PACKAGES]
    for key in wanted:
        module, install = _PACKAGES[key]
        label = "attention_kernel " + key if key != "fp8_linear" else "fp8_linear"
        if device.type != "cuda":
            raise SpeedOptionError(f"{label} needs a CUDA GPU ({_WHAT[key]}); the device is {device}: run on a GPU, "
                                   f"or drop it (e.g. no --speed_preset)")
        if not _module_found(module):
            raise SpeedOptionError(f"{label} needs {_WHAT[key]} ({module} is not installed): {install}")
        major, minor = torch.cuda.get_device_capability(device)
        need = _MIN_CAPABILITY[key]
        if (major, minor) < need or major > _MAX_MAJOR.get(key, 99):
            limit = f"{need[0]}.{need[1]}" + (f" to {_MAX_MAJOR[key]}.x" if key in _MAX_MAJOR else " or newer")
            raise SpeedOptionError(f"{label} needs a GPU of compute capability {limit}; "
                                   f"{torch.cuda.get_device_name(device)} is {major}.{minor}")
    if options.fp8_mm:
        try:
            FP8Linear(torch.nn.Linear(32, 16, device=device, dtype=torch.bfloat16))(
                torch.ones(4, 32, device=device, dtype=torch.bfloat16))
        except (RuntimeError, NotImplementedError) as e:
            name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
            raise SpeedOptionError(f"fp8_mm: torch._scaled_mm with per-row scales does not run on {name} with torch "
                                   f"{torch.__version__} ({str(e).splitlines()[0][:200]}): drop fp8_mm, or use a "
                                   f"GPU of compute capability 8.9 or newer") from None


# -- the attention kernels -------------------------------------------------------------------------------------
# Each replaces ``AsymmetricAttention.sdpa_attention(q, k, v)`` of one block: q, k, v (B, heads, tokens, 128)
# bf16, the visual then the valid text tokens, no mask; returns the same shape. The external kernel call is
# opaque to torch.compile (a graph break); the FP8 quantisation around it stays compilable.

def _sdpa_with(backend: SDPBackend, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    with sdpa_kernel([backend]):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False)


def _bshd_kernel(kernel: Callable, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """FlashAttention's layout is (B, tokens, heads, dim): upstream's q, k, v are transposed views of exactly
    that, so no copy is made either way."""
    out = kernel(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def smooth_k(k: torch.Tensor) -> torch.Tensor:
    """K minus its mean over tokens, per head and channel: every score of a query row moves by the same
    amount, so softmax (and attention) is unchanged, while K's range, what FP8 must cover, shrinks."""
    return k - k.mean(dim=-2, keepdim=True)


def quantize_fp8_per_head(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, heads, tokens, dim) -> e4m3 values and their descale (B, heads) float32: x ~= q * descale."""
    xf = x.float()
    descale = (xf.abs().amax(dim=(2, 3)) / FP8_E4M3_MAX).clamp(min=1e-12)
    return (xf / descale[:, :, None, None]).to(torch.float8_e4m3fn), descale


def _fa3_fp8(kernel: Callable, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    q8, qd = quantize_fp8_per_head(q)
    k8, kd = quantize_fp8_per_head(smooth_k(k.float()))
    v8, vd = quantize_fp8_per_head(v)
    out = kernel(q8.transpose(1, 2), k8.transpose(1, 2), v8.transpose(1, 2), qd, kd, vd)
    return out.transpose(1, 2).to(q.dtype)


def _load_attention(kernel: str) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    if kernel in ("fa3", "fa3_fp8"):
        from fa3_fwd_interface import flash_attn_func as fa3

        if kernel == "fa3":
            return partial(_bshd_kernel, torch.compiler.disable(fa3))

        def fa3_descaled(q, k, v, qd, kd, vd):
            return fa3(q, k, v, q_descale=qd, k_descale=kd, v_descale=vd)

        return partial(_fa3_fp8, torch.compiler.disable(fa3_descaled))
    if kernel == "fa4":
        from flash_attn.cute import flash_attn_func as fa4

        def fa4_out(q, k, v):
            out = fa4(q, k, v)
            return out[0] if isinstance(out, tuple) else out

        return partial(_bshd_kernel, torch.compiler.disable(fa4_out))
    if kernel == "sage":
        from sageattention import sageattn

        def sage(q, k, v):
            return sageattn(q, k, v, tensor_layout="HND", is_causal=False)

        return torch.compiler.disable(sage)
    raise ValueError(f"attention_kernel {kernel!r} has no loader")


def set_attention(dit: torch.nn.Module, kernel: str = "sdpa", sdpa_backend: str = "auto") -> None:
    """Point every block's attention at ``kernel`` (per instance: other models in the process keep upstream's
    choice). ``("sdpa", "auto")`` restores upstream's method."""
    if kernel == "sdpa":
        fn = None if sdpa_backend == "auto" else partial(_sdpa_with, SDPA_BACKENDS[sdpa_backend])
    else:
        fn = _load_attention(kernel)
    for block in dit.blocks:
        if fn is None:
            block.attn.__dict__.pop("sdpa_attention", None)
        else:
            block.attn.sdpa_attention = fn


def quantize_fp8_linears(block: torch.nn.Module) -> int:
    """torchao FP8 (dynamic per-row activation and weight scales) for the visual linears of one block. Returns how
    many layers were converted."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    count = 0

    def wanted(module: torch.nn.Module, name: str) -> bool:
        nonlocal count
        hit = isinstance(module, torch.nn.Linear) and name in FP8_LINEARS
        count += hit
        return hit

    quantize_(block, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), filter_fn=wanted)
    return count


class FP8Linear(torch.nn.Module):
    """``linear`` (bf16, no LoRA) in float8 e4m3: weights with one scale per output channel, quantised once;
    activations with one scale per token, quantised on every call; ``torch._scaled_mm`` multiplies them and
    applies both scales, with bf16 output. ``x ~= x_q * x_scale`` and ``W ~= W_q * w_scale`` row by row, so the
    product is exact up to the two roundings to e4m3 (3 mantissa bits) and the bf16 output."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight, scale = self.quantize(linear.weight.detach())
        self.register_buffer("weight", weight)  # (out, in) e4m3: its transpose is the column-major operand
        self.register_buffer("weight_scale", scale.t().contiguous())  # (1, out) float32
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.bfloat16))

    @staticmethod
    def quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of ``x`` (2-D) to e4m3 and their float32 scales (rows, 1): ``x ~= q * scale``."""
        xf = x.float()
        scale = (xf.abs().amax(dim=1, keepdim=True) / FP8_E4M3_MAX).clamp(min=1e-12)
        return (xf / scale).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn), scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, scale = self.quantize(x.reshape(-1, self.in_features))
        y = torch._scaled_mm(q, self.weight.t(), scale_a=scale, scale_b=self.weight_scale, out_dtype=torch.bfloat16)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, e4m3 per-row scales"


def use_fp8_mm(dit: torch.nn.Module) -> dict[tuple[int, str], torch.nn.Module]:
    """Replace the visual linears of every block (``FP8_LINEARS``) by :class:`FP8Linear`; a layer with an active
    LoRA stays as it is. Returns the replaced modules by (block, name), to put back with :func:`restore_linears`."""
    return {(i, name): module for i, block in enumerate(dit.blocks) for name, module in fp8_mm_block(block).items()}


def fp8_mm_block(block: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """:func:`use_fp8_mm` for one block: the replaced modules by name."""
    replaced = {}
    for name in FP8_LINEARS:
        module = block.get_submodule(name)
        if getattr(module, "r", 0) > 0:  # LoraLinear with a LoRA: its update is not part of the weight
            continue
        parent, _, attr = name.rpartition(".")
        setattr(block.get_submodule(parent), attr, FP8Linear(module))
        replaced[name] = module
    return replaced


def restore_linears(dit: torch.nn.Module, replaced: dict[tuple[int, str], torch.nn.Module]) -> None:
    for (i, name), module in replaced.items():
        parent, _, attr = name.rpartition(".")
        setattr(dit.blocks[i].get_submodule(parent), attr, module)


def check_movable(options: SpeedOptions) -> None:
    """Raise :class:`SpeedOptionError` if the DiT these options make cannot move between the CPU and the GPU, as
    ``--low_memory`` moves it between phases: torchao's FP8 weights (``fp8_linear``) are not moved by this project."""
    if options.fp8_linear:
        raise SpeedOptionError("fp8_linear (torchao FP8 weights) is not moved between the CPU and the GPU, as "
                               "--low_memory does: use fp8_mm instead (the same layers in FP8, without torchao)")


def cast_weights(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Upstream's ``pipelines.cast_dit`` for any part of the DiT: its Linear and Conv2d layers to ``dtype`` (norm
    weights and RoPE frequencies stay fp32)."""
    for m in module.modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            m.to(dtype=dtype)


def apply_speed_options(dit: torch.nn.Module, options: SpeedOptions, *,
                        convert_on: torch.device | None = None) -> torch.nn.Module:
    """Apply ``options`` to an (unwrapped) DiT, in place. Call after its weights are loaded. Raises
    :class:`SpeedOptionError` first if an option cannot run on the device (``convert_on``, else the DiT's).

    The weights are converted (bf16 cast, FP8) one part at a time (``model.dit_parts``: a block, or one of the other
    top-level modules). With ``convert_on`` each part is moved there for its conversion and back to where it was:
    ``--low_memory`` converts on the GPU a DiT that stays on the CPU, so its fp32 weights are never whole on the GPU,
    by the same operations on the same device as in place (bit-identical weights)."""
    from genmo_teacache.model import dit_parts

    if options.is_default:
        return dit
    device = convert_on or next(dit.parameters()).device
    check_speed_options(options, device)
    if convert_on is not None:
        check_movable(options)
    blocks, converted = set(dit.blocks), 0
    for part in dit_parts(dit):
        home = next(part.parameters()).device
        part.to(device)
        if options.dit_dtype == "bf16":
            cast_weights(part, torch.bfloat16)
        if part in blocks and options.fp8_linear:
            converted += quantize_fp8_linears(part)
        if part in blocks and options.fp8_mm:
            converted += len(fp8_mm_block(part))
        part.to(home)
    if converted:
        log.info("FP8 linear layers (%s): %d converted", "torchao" if options.fp8_linear else "torch._scaled_mm",
                 converted)
    if options.attention_kernel != "sdpa" or options.sdpa_backend != "auto":
        set_attention(dit, options.attention_kernel, options.sdpa_backend)
    if options.sparse is not None:  # after the kernel (its dense path), before compile
        from genmo_teacache.sparse import SparseStepHook, install_sparse_attention

        # compiled FlexAttention where the DiT runs (with --low_memory it is still on the CPU here)
        state = install_sparse_attention(dit, options.sparse, compiled=device.type == "cuda",
                                         compile_dense=options.compile_dit)
        if hasattr(dit, "add_step_hook"):  # our DiT: the sampler begins and ends its steps, records densities
            dit.add_step_hook(SparseStepHook(state))
    if options.compile_dit:
        if options.fp8_linear:
            log.warning("fp8_linear with compile: in our H200 benchmarks its first forward never finished "
                        "compiling (tried for about 4 and 5 minutes; torchao FP8 weights under torch.compile); "
                        "eager fp8_linear was no faster than bf16. fp8_mm (no torchao) compiles in seconds: "
                        "docs/BENCHMARKS.md section 3.3")
        from genmo_teacache.dynamo import raise_recompile_limit

        raise_recompile_limit()
        for block in dit.blocks:
            block.compile(dynamic=False)
    log.info("DiT speed options: %s", options.spec())
    return dit

