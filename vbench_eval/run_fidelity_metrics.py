#!/usr/bin/env python3
"""PSNR / SSIM / LPIPS of every mode against the baseline (reference entry point; see docs/EVALUATION.md).

    python3 vbench_eval/run_fidelity_metrics.py --video-dir vbench_eval/videos --baseline mochi_baseline \
        --modes mochi_fixed_0.04,mochi_fixed_0.12 --save-dir vbench_eval/fidelity_metrics
"""

from genmo_teacache.eval.cli import fidelity_command

if __name__ == "__main__":
    fidelity_command()
