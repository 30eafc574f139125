"""``TeaCacheAsymmDiTJoint``: upstream's DiT with its forward split into phases a caching sampler can drive.

    prepare_step      patch embedding, timestep + pooled-text conditioning, RoPE, context-parallel shard
    modulated_input   block 0's modulated input RMSNorm(x) * (1 + scale_msa_x): TeaCache's indicator source
    first_block       block 0 alone (first-block cache's indicator)
    run_blocks        the transformer blocks, all or from block k on (the expensive part a skipped step avoids)
    finish            final layer (with the current step's modulation), all-gather, unpatchify

Called as a plain module, ``forward`` chains the phases and returns exactly what upstream's forward returns.

Step hooks (:class:`StepHooks`, registered with :meth:`TeaCacheAsymmDiTJoint.add_step_hook`): what needs per-step
state inside the DiT (an attention kernel with dense warm-up steps, recording what it did) learns where the sampler
is: ``begin_step`` before any DiT call of a denoising step, ``end_step`` after its outputs (see sampler.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from genmo_teacache.upstream import RMSNorm, cp, modulated_rmsnorm
from genmo_teacache.upstream import asymm_dit as upstream_dit

if TYPE_CHECKING:
    from genmo_teacache.caches.base import StepRecord

AsymmDiTJoint = upstream_dit.AsymmDiTJoint


@dataclass(frozen=True)
class StepInfo:
    """Where the sampler is, for step hooks."""

    step: int  # 0-based
    num_steps: int
    sigma: float
    grid: tuple[int, int, int]  # the visual tokens of the whole video: latent frames, rows, columns after patching
    warm_up: bool = False  # the sampler's untimed warm-up pass before step 0 (a new input shape), not a step


class StepHooks(Protocol):
    """Called by the sampler on every denoising step (every rank, whatever the cache decides)."""

    def begin_step(self, info: StepInfo) -> None:
        """Before any DiT call of the step."""

    def end_step(self, info: StepInfo, record: StepRecord | None) -> None:
        """After the step's outputs; ``record`` (the report's entry for the step) may be filled in. For the warm-up
        pass (``info.warm_up``: the DiT run once on step 0's inputs, outputs dropped, before step 0 begins) ``record``
        is None."""


@dataclass
class StepInputs:
    """What ``prepare_step`` produces for one DiT call (one CFG branch, or both when CFG is batched)."""

    x: torch.Tensor  # (B, M, D) visual tokens of this context-parallel rank
    c: torch.Tensor  # (B, D) conditioning
    y_feat: torch.Tensor  # (B, L, D_y) projected text tokens
    rope_cos: torch.Tensor
    rope_sin: torch.Tensor
    packed_indices: dict[str, Any]
    thw: tuple[int, int, int]  # latent T, H, W


class TeaCacheAsymmDiTJoint(AsymmDiTJoint):
    """Upstream ``AsymmDiTJoint`` plus phase methods. Holds no cache state: the sampler owns it."""

    step_hooks: tuple[StepHooks, ...] = ()

    def add_step_hook(self, hook: StepHooks) -> None:
        """Have the sampler call ``hook`` on every denoising step of this DiT (see :class:`StepHooks`)."""
        self.step_hooks = (*self.step_hooks, hook)

    def prepare_step(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        y_feat: list[torch.Tensor],
        y_mask: list[torch.Tensor],
        packed_indices: dict[str, Any] | None = None,
        memo: dict[str, Any] | None = None,
    ) -> StepInputs:
        """Upstream's ``prepare`` plus the context-parallel shard. With a ``memo`` dict (one per CFG branch and
        generation), what does not change between steps (pooled and projected text, RoPE) is computed once:
        the same operations on the same inputs, so the results are bit-identical, and the masked T5 pooling
        (a 4096 x 8192 projection of 257 tokens) is not redone every step."""
        T, H, W = x.shape[-3:]
        # Same backend choice as upstream: EFFICIENT_ATTENTION for the masked pooling (shimmed on CPU). Looked up
        # on the upstream module so the compat shim applies here exactly as it does to upstream's forward.
        with upstream_dit.sdpa_kernel(torch.nn.attention.SDPBackend.EFFICIENT_ATTENTION):
            if memo is None:
                x, c, y, rope_cos, rope_sin = self.prepare(x, sigma, y_feat[0], y_mask[0])
            else:
                x, c, y, rope_cos, rope_sin = self._prepare_with_memo(x, sigma, y_feat[0], y_mask[0], memo)
        cp_rank, cp_size = cp.get_cp_rank_size()
        N = x.size(1)
        M = N // cp_size
        assert N % cp_size == 0, f"Visual sequence length ({N}) must be divisible by cp_size ({cp_size})."
        if cp_size > 1:
            x = x.narrow(1, cp_rank * M, M)
            assert self.num_heads % cp_size == 0
            local_heads = self.num_heads // cp_size
            rope_cos = rope_cos.narrow(1, cp_rank * local_heads, local_heads)
            rope_sin = rope_sin.narrow(1, cp_rank * local_heads, local_heads)
        return StepInputs(x, c, y, rope_cos, rope_sin, packed_indices or {}, (T, H, W))

    def _prepare_with_memo(self, x, sigma, t5_feat, t5_mask, memo):
        """Upstream ``AsymmDiTJoint.prepare``, operation for operation, with its step-invariant parts memoised."""
        T, H, W = x.shape[-3:]
        pH, pW = H // self.patch_size, W // self.patch_size
        x = self.embed_x(x)
        assert x.ndim == 3 and x.size(1) == T * pH * pW
        rope = memo.setdefault("shared", {})  # RoPE depends on positions only: CFG branches may share it
        if "rope" not in rope:
            pos = upstream_dit.create_position_matrix(T, pH=pH, pW=pW, device=x.device, dtype=torch.float32)
            rope["rope"] = upstream_dit.compute_mixed_rotation(freqs=self.pos_frequencies, pos=pos)
        c_t = self.t_embedder(1 - sigma)
        if "t5_y_pool" not in memo:
            assert t5_feat.size(1) == self.t5_token_length, f"Expected L={self.t5_token_length}, got {t5_feat.shape}"
            memo["t5_y_pool"] = self.t5_y_embedder(t5_feat, t5_mask)
            memo["y_feat"] = self.t5_yproj(t5_feat)
        assert memo["t5_y_pool"].size(0) == x.size(0)
        return x, c_t + memo["t5_y_pool"], memo["y_feat"], *rope["rope"]

    def block0_modulation(self) -> nn.Linear:
        """The linear producing block 0's modulation. Under FSDP its parameters are flat shards outside the
        block's forward; the multi-GPU pipeline then provides a replicated copy (see pipelines)."""
        replicated = getattr(self, "_replicated_mod_x0", None)
        return self.blocks[0].mod_x if replicated is None else replicated

    def modulated_input(self, inputs: StepInputs) -> torch.Tensor:
        """Block 0's modulated input, computed as block 0 computes it before its attention."""
        mod_x = self.block0_modulation()(F.silu(inputs.c))
        scale_msa_x = mod_x.chunk(4, dim=1)[0]
        return modulated_rmsnorm(inputs.x, scale_msa_x)

    def run_blocks(
        self,
        inputs: StepInputs,
        num_ff_checkpoint: int = 0,
        num_qkv_checkpoint: int = 0,
        num_post_attn_checkpoint: int = 0,
        *,
        start: int = 0,
        state: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Blocks ``start``.. on the visual tokens; ``state`` = (x, y_feat) after block ``start - 1`` (see
        :meth:`first_block`), else the step's embedded tokens. Returns the visual tokens after the last block."""
        x, y_feat = state if state is not None else (inputs.x, inputs.y_feat)
        for i in range(start, len(self.blocks)):
            x, y_feat = self._block(i, x, y_feat, inputs, num_ff_checkpoint, num_qkv_checkpoint,
                                    num_post_attn_checkpoint)
        return x

    def first_block(self, inputs: StepInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Block 0 alone: (visual tokens, text tokens) after it (first-block cache runs it every step)."""
        return self._block(0, inputs.x, inputs.y_feat, inputs)

    def _block(self, i, x, y_feat, inputs, num_ff_checkpoint=0, num_qkv_checkpoint=0, num_post_attn_checkpoint=0):
        return self.blocks[i](
            x,
            inputs.c,
            y_feat,
            rope_cos=inputs.rope_cos,
            rope_sin=inputs.rope_sin,
            packed_indices=inputs.packed_indices,
            checkpoint_ff=i < num_ff_checkpoint,
            checkpoint_qkv=i < num_qkv_checkpoint,
            checkpoint_post_attn=i < num_post_attn_checkpoint,
        )

    def finish(self, x: torch.Tensor, inputs: StepInputs) -> torch.Tensor:
        T, H, W = inputs.thw
        _, cp_size = cp.get_cp_rank_size()
        x = self.final_layer(x, inputs.c)  # (B, M, patch_size ** 2 * out_channels)
        patch = x.size(2)
        x = cp.all_gather(x)
        x = rearrange(x, "(G B) M P -> B (G M) P", G=cp_size, P=patch)
        return rearrange(
            x,
            "B (T hp wp) (p1 p2 c) -> B c T (hp p1) (wp p2)",
            T=T,
            hp=H // self.patch_size,
            wp=W // self.patch_size,
            p1=self.patch_size,
            p2=self.patch_size,
            c=self.out_channels,
        )

    def forward(self, *args: Any, phase: str = "full", **kwargs: Any) -> Any:
        """``phase="full"`` (default): upstream's forward, same arguments, same result. The sampler calls the
        other phases through ``forward`` too (``"prepare"``, ``"modulated_input"``, ``"first_block"``, ``"blocks"``,
        ``"finish"``) so that wrappers such as FSDP see a forward call and gather the parameters the phase needs
        (``"noop"`` does nothing but that)."""
        if phase == "full":
            return self._full_forward(*args, **kwargs)
        if phase == "noop":  # lets a wrapper (FSDP) run its lazy root initialisation
            return None
        return getattr(self, _PHASES[phase])(*args, **kwargs)

    def _full_forward(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        y_feat: list[torch.Tensor],
        y_mask: list[torch.Tensor],
        packed_indices: dict[str, Any] | None = None,
        rope_cos: torch.Tensor | None = None,
        rope_sin: torch.Tensor | None = None,
        num_ff_checkpoint: int = 0,
        num_qkv_checkpoint: int = 0,
        num_post_attn_checkpoint: int = 0,
    ) -> torch.Tensor:
        if self.pos_frequencies.dtype != torch.float32:
            import warnings

            warnings.warn(f"pos_frequencies dtype {self.pos_frequencies.dtype} != torch.float32", stacklevel=2)
        inputs = self.prepare_step(x, sigma, y_feat, y_mask, packed_indices)
        out = self.run_blocks(inputs, num_ff_checkpoint, num_qkv_checkpoint, num_post_attn_checkpoint)
        return self.finish(out, inputs)


_PHASES = {"prepare": "prepare_step", "modulated_input": "modulated_input", "first_block": "first_block",
           "blocks": "run_blocks", "finish": "finish"}


def init_random_dit(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Initialise what upstream leaves empty (``RMSNorm.weight``, ``pos_frequencies``) so a randomly initialised
    DiT gives finite outputs. Other parameters keep PyTorch's default initialisation (see :func:`random_dit`)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, RMSNorm):
                m.weight.fill_(1.0)
        pf = model.pos_frequencies
        pf.copy_(torch.rand(pf.shape, generator=gen, device="cpu") * 0.5)
    return model


def dit_parts(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The DiT's parameters in pieces of at most one block: each transformer block, then each other top-level module
    (embeddings, text pooling, final layer). Only the root's own ``pos_frequencies`` is in none of them."""
    return [*model.blocks, *(m for name, m in model.named_children() if name != "blocks")]


def random_dit(cls: type[torch.nn.Module], kwargs: dict[str, Any], *, draw: torch.device, place: torch.device,
               seed: int = 0) -> torch.nn.Module:
    """``cls(**kwargs)`` with random weights (benchmarks: timings and memory, its outputs are noise), made one part
    at a time (:func:`dit_parts`): each is drawn on ``draw`` with PyTorch's default initialisation (seeded), then
    moved to ``place``, so a 40 GB fp32 DiT is never whole on ``draw`` unless ``place`` is ``draw``. The same
    ``draw`` device and seed give the same weights wherever they are placed. Then :func:`init_random_dit`."""
    with torch.device("meta"):
        model = cls(**kwargs)
    torch.manual_seed(seed)
    with torch.no_grad():
        for part in dit_parts(model):
            part.to_empty(device=draw)
            for m in part.modules():
                if hasattr(m, "reset_parameters") and any(True for _ in m.parameters(recurse=False)):
                    m.reset_parameters()  # Linear, Conv2d, LayerNorm; RMSNorm has none: init_random_dit fills it
            part.to(place)
        for name, p in list(model.named_parameters(recurse=False)):
            setattr(model, name, torch.nn.Parameter(torch.empty_like(p, device=place), requires_grad=p.requires_grad))
    return init_random_dit(model, seed)
