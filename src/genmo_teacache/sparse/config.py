"""Sparse-attention methods as speed-spec tokens: frozen, validated configs whose token round-trips.

    sparse_tile_<density>[_w<steps>]    a static window of 3-D tiles (Sliding Tile Attention's rule)
    sparse_heads_<density>[_w<steps>]   per head, spatial or temporal, decided online (Sparse VideoGen's rule)
    sparse_topk_<density>[_w<steps>]    per head and query block, the key blocks of highest pooled score
                                        (SpargeAttn's top-k block filter)

``density`` is the share of (query block, key block) pairs the kernel computes, text blocks included (what its
time follows); the windows are chosen to stay at or below it (``sparse_topk``: the share of key blocks each query
block selects, before the text blocks are added). ``_w<steps>`` is the number of dense warm-up steps;
without it, the published share of the steps (each method's ``WARMUP_FRACTION``, floor of share x steps: 19 and
6 of Mochi's 64). Constants cite the file they come from.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar

from genmo_teacache.caches.base import NUM, fmt


def check_density(value: float, token: str, prefix: str) -> float:
    value = float(value)
    if not math.isfinite(value) or not 0 < value <= 1:
        raise ValueError(f"speed token {token!r}: density {value!r} must be in (0, 1] (the share of attention blocks "
                         f"kept), e.g. {prefix}_0.17")
    return value


@dataclass(frozen=True)
class SparseConfig:
    """Base of the sparse-attention configs: ``density`` (0, 1], ``warmup`` dense steps (None: the published share
    of the run's steps). Subclasses set the class attributes."""

    key: ClassVar[str]  # the method's name in records and docs
    prefix: ClassVar[str]  # its token prefix
    WARMUP_FRACTION: ClassVar[float]  # published dense steps / published steps
    DENSE_LAYERS_FRACTION: ClassVar[float] = 0.0  # published dense layers / layers (floor of share x depth)
    published: ClassVar[str]  # where the constants come from (docs, records)

    density: float
    warmup: int | None = None

    def __post_init__(self) -> None:
        token = f"{self.prefix}_{self.density}"
        object.__setattr__(self, "density", check_density(self.density, token, self.prefix))
        if self.warmup is not None and (isinstance(self.warmup, bool) or not isinstance(self.warmup, int)
                                        or self.warmup < 0):
            raise ValueError(f"{self.prefix} warm-up {self.warmup!r}: use a whole number of dense steps >= 0 "
                             f"({self.prefix}_<density>_w<steps>)")

    @classmethod
    def syntax(cls) -> str:
        return f"{cls.prefix}_<density>[_w<dense warm-up steps>]"

    @classmethod
    def parse(cls, token: str) -> SparseConfig:
        m = re.fullmatch(rf"{cls.prefix}_{NUM}(?:_w(\d+))?", token.strip())
        if m is None:
            raise ValueError(f"speed token {token!r}: use {cls.syntax()}, e.g. {cls.prefix}_0.17 or "
                             f"{cls.prefix}_0.17_w10")
        density = check_density(float(m.group(1)), token, cls.prefix)
        return cls(density=density, warmup=int(m.group(2)) if m.group(2) else None)

    @property
    def token(self) -> str:
        """The canonical token: ``parse(c.token) == c``."""
        w = "" if self.warmup is None else f"_w{self.warmup}"
        return f"{self.prefix}_{fmt(self.density)}{w}"

    def warmup_steps(self, num_steps: int) -> int:
        """Dense steps at the start of a ``num_steps`` run."""
        return self.warmup if self.warmup is not None else math.floor(self.WARMUP_FRACTION * num_steps)

    def dense_layers(self, depth: int) -> int:
        """Blocks (from the first) that always run dense attention."""
        return math.floor(self.DENSE_LAYERS_FRACTION * depth)

    def to_dict(self, num_steps: int | None = None) -> dict[str, Any]:
        d = {"token": self.token, "method": self.key, "density": self.density, "warmup": self.warmup}
        if num_steps is not None:
            d["warmup_steps"] = self.warmup_steps(num_steps)
        return d

    def __str__(self) -> str:
        return self.token


@dataclass(frozen=True)
class SparseTile(SparseConfig):
    """Sliding Tile Attention (Zhang et al., 2025, arXiv 2502.04507; hao-ai-lab/FastVideo): tokens reordered into
    3-D tiles; every query tile attends to a window of ``k_t x k_h x k_w`` tiles whose centre is the query's tile,
    clamped so the window stays inside the grid (fastvideo-kernel/tests/support_flex_sta.py, ``sta_mask_3d``).
    STA searches a window per head, layer and step; this is its training-free static form: one window, the same
    share of each axis, the largest whose density is at most ``density``."""

    key: ClassVar[str] = "sliding_tile"
    prefix: ClassVar[str] = "sparse_tile"
    # FastVideo branch sta_do_not_delete, assets/mask_strategy_hunyuan.json: steps 0-14 of HunyuanVideo's 50 run
    # the full window [5, 6, 10] (dense), from step 15 on the searched windows. 15/50 -> 19 of Mochi's 64 steps.
    WARMUP_FRACTION: ClassVar[float] = 15 / 50
    published: ClassVar[str] = ("STA, FastVideo sta_do_not_delete: assets/mask_strategy_hunyuan.json (15 of 50 "
                                "steps dense), fastvideo-kernel/tests/support_flex_sta.py (window rule)")


@dataclass(frozen=True)
class SparseHeads(SparseConfig):
    """Sparse VideoGen (Xi et al., ICML 2025, arXiv 2502.01776; svg-project/Sparse-VideoGen): per layer and step, a few
    sampled query rows are attended densely and under each pattern; each head takes the pattern whose output is closest
    (mean squared error) to the dense one: spatial (its own and nearby frames, the whole frame) or temporal (every
    frame, the same spatial neighbourhood). Both patterns are fitted to ``density``."""

    key: ClassVar[str] = "sparse_videogen"
    prefix: ClassVar[str] = "sparse_heads"
    # scripts/hyvideo/hyvideo_t2v_720p_svg.sh: first_times_fp=0.1, first_layers_fp=0.03, num_sampled_rows 64,
    # sparsity=0.25 (the kept share); hyvideo_t2v_inference.py takes floor(share x steps) and floor(share x layers):
    # 6 of Mochi's 64 steps and 1 of its 48 blocks dense.
    WARMUP_FRACTION: ClassVar[float] = 0.1
    DENSE_LAYERS_FRACTION: ClassVar[float] = 0.03
    SAMPLED_ROWS: ClassVar[int] = 64
    published: ClassVar[str] = ("Sparse VideoGen: scripts/hyvideo/hyvideo_t2v_720p_svg.sh (first_times_fp 0.1, "
                                "first_layers_fp 0.03, 64 sampled rows), svg/models/hyvideo/attention.py (sample_mse)")


@dataclass(frozen=True)
class SparseTopK(SparseConfig):
    """SpargeAttn (Zhang et al., ICML 2025, arXiv 2502.18137; thu-ml/SpargeAttn), its recommended
    ``spas_sage2_attn_meansim_topk_cuda``: per call, head and query block, the queries and keys are mean-pooled per
    block, the pooled scores softmaxed over the key blocks, and the top ``floor(density x key blocks)`` (at least one)
    kept; a block whose tokens are not self-similar (mean cosine similarity at or below ``SIM_THRESHOLD``) is kept
    whole. Its kernel's further filter (skipping P V where a block's row maximum is negligible, ``pvthreshd``) and its
    8-bit Q K / FP8 P V are kernel features not reproduced: here the selected blocks run in FlexAttention, bf16."""

    key: ClassVar[str] = "sparge_topk"
    prefix: ClassVar[str] = "sparse_topk"
    # spas_sage_attn/core.py, spas_sage2_attn_meansim_topk_cuda: topk=0.5, simthreshd1=-0.1 (the README's plug-in;
    # inference_examples/wan_infer.py runs --value 0.4); no dense steps in its inference examples.
    WARMUP_FRACTION: ClassVar[float] = 0.0
    SIM_THRESHOLD: ClassVar[float] = -0.1
    published: ClassVar[str] = ("SpargeAttn: spas_sage_attn/core.py spas_sage2_attn_meansim_topk_cuda (topk 0.5, "
                                "simthreshd1 -0.1), spas_sage_attn/utils.py get_block_map_meansim_fuse_quant (rule)")


SPARSE_METHODS: tuple[type[SparseConfig], ...] = (SparseTile, SparseHeads, SparseTopK)


def parse_sparse(token: str) -> SparseConfig | None:
    """The config a speed token names, None when it is no sparse-attention token; ValueError (naming the token and
    the grammar) when it starts like one but is malformed."""
    text = token.strip()
    for cls in SPARSE_METHODS:
        if text == cls.prefix or text.startswith(cls.prefix + "_"):
            return cls.parse(text)
    if text.startswith("sparse_"):
        raise ValueError(f"speed token {token!r}: no such sparse attention; use "
                         + " or ".join(c.syntax() for c in SPARSE_METHODS))
    return None
