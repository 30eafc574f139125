#!/usr/bin/env python3
"""VBench on every mode and dimension, in VBench's own environment (reference entry point; see docs/EVALUATION.md).

    python3 vbench_eval/run_vbench_eval.py --video-dir vbench_eval/videos --save-dir vbench_eval/vbench_scores \
        [--modes mochi_baseline,mochi_fixed_0.04] [--dimensions temporal_flickering] [--full-info FILE]
"""

from genmo_teacache.eval.cli import vbench_command

if __name__ == "__main__":
    vbench_command()
