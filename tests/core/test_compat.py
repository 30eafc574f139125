"""Each upstream shim, on the real upstream modules."""

import subprocess
import sys
import textwrap

import pytest
import torch

from genmo_teacache import compat


def test_apply_is_idempotent_and_lists_cpu_shims():
    first = compat.apply()
    assert compat.apply() == first
    if not torch.cuda.is_available():
        assert {"attn_imports", "pooling_math", "rope_fp32"} <= set(first)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only shims")
def test_upstream_attn_imports_load_without_cuda():
    import genmo.lib.attn_imports as ai

    assert torch.nn.attention.SDPBackend.CUDNN_ATTENTION not in ai.eval_backends


def _upstream_tiny_dit(attention_mode="sdpa"):
    from genmo_teacache.model import AsymmDiTJoint, init_random_dit
    from genmo_teacache.pipelines import dit_kwargs
    from genmo_teacache.tiny import TINY_DIT_KWARGS

    torch.manual_seed(0)
    return init_random_dit(AsymmDiTJoint(**dit_kwargs(TINY_DIT_KWARGS, attention_mode))).eval()


def _inputs(B=1, T=2, H=8, W=8, text=5):
    torch.manual_seed(1)
    y_feat = torch.randn(B, 256, 4096) * 0.1
    y_mask = torch.zeros(B, 256, dtype=torch.bool)
    y_mask[:, :text] = True
    from genmo.mochi_preview.pipelines import compute_packed_indices

    return torch.randn(B, 12, T, H, W), torch.full([B], 0.7), [y_feat], [y_mask], compute_packed_indices(
        torch.device("cpu"), y_mask, T * H * W)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only shims")
def test_unmodified_upstream_forward_runs_on_cpu():
    """Masked pooling (EFFICIENT_ATTENTION only upstream) and bf16 prepare_qkv both work under CPU autocast."""
    dit = _upstream_tiny_dit()
    x, sigma, y_feat, y_mask, packed = _inputs()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = dit(x, sigma, y_feat, y_mask, packed)
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only shims")
def test_rope_stays_fp32_under_cpu_autocast():
    import genmo.mochi_preview.dit.joint_model.asymm_models_joint as m
    from genmo.mochi_preview.dit.joint_model import rope_mixed

    freqs, pos = torch.rand(3, 4, 16), torch.rand(10, 3) * 50
    expected = rope_mixed.compute_mixed_rotation(freqs, pos)  # fp32, no autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cos, sin = m.compute_mixed_rotation(freqs, pos)
        unshimmed_cos, _ = rope_mixed.compute_mixed_rotation(freqs, pos)
    assert cos.dtype == torch.float32 and torch.equal(cos, expected[0]) and torch.equal(sin, expected[1])
    assert not torch.equal(unshimmed_cos.float(), expected[0])  # the quirk the shim fixes


def test_varlen_reference_matches_padded_attention():
    torch.manual_seed(0)
    lens = [7, 4]
    q, k, v = (torch.randn(sum(lens), 2, 8) for _ in range(3))
    cu = torch.tensor([0, 7, 11], dtype=torch.int32)
    out = compat.varlen_attention_reference(q, k, v, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=7,
                                            max_seqlen_k=7)
    for start, n in ((0, 7), (7, 4)):
        s = slice(start, start + n)
        att = torch.softmax(torch.einsum("qhd,khd->hqk", q[s], k[s]) / 8**0.5, dim=-1)
        torch.testing.assert_close(out[s], torch.einsum("hqk,khd->qhd", att, v[s]))


def test_moviepy_stub_when_moviepy_is_missing():
    code = textwrap.dedent("""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] == "moviepy":
                    raise ModuleNotFoundError(name)
        sys.meta_path.insert(0, Block())
        from genmo_teacache import compat
        assert "moviepy_stub" in compat.apply()
        import genmo.mochi_preview.pipelines  # imports genmo.lib.utils -> moviepy.editor
        import numpy as np
        from genmo.lib.utils import save_video
        try:
            save_video(np.zeros((2, 8, 8, 3), np.uint8), "x.mp4")
        except ImportError as e:
            assert "imageio-ffmpeg" in str(e)
            print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
