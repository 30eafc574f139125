"""Training-free sparse attention for Mochi's joint attention (docs/METHODS.md, "Sparse attention").

    config.py    the methods as speed-spec tokens (``sparse_tile_<density>[_w<steps>]``,
                 ``sparse_heads_<density>[_w<steps>]``, ``sparse_topk_<density>[_w<steps>]``): frozen configs,
                 published constants with their sources
    layout.py    the tile order in which a local window is whole attention blocks; windows fitted to a density
    kernel.py    FlexAttention over whole blocks; Sparse VideoGen's sampled-query head classification; SpargeAttn's
                 pooled top-k block selection
    install.py   install on a DiT (per block instance), the per-generation/per-step state and its records, removal
"""

from genmo_teacache.sparse.config import (
    SPARSE_METHODS,
    SparseConfig,
    SparseHeads,
    SparseTile,
    SparseTopK,
    parse_sparse,
)
from genmo_teacache.sparse.install import (
    SparseAttentionState,
    SparseStepHook,
    follow_sigma_schedule,
    install_sparse_attention,
    installed_state,
    remove_sparse_attention,
)

__all__ = ["SPARSE_METHODS", "SparseAttentionState", "SparseConfig", "SparseHeads", "SparseStepHook", "SparseTile",
           "SparseTopK",
           "follow_sigma_schedule", "install_sparse_attention", "installed_state", "parse_sparse",
           "remove_sparse_attention"]
