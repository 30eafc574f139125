#!/usr/bin/env python3
"""Batch generation for the VBench evaluation: ``genmo-teacache batch`` with the reference workflow's defaults (see
docs/BATCH.md): videos in ``vbench_eval/videos/<mode>/<prompt>-<seed>.mp4``, logs in
``vbench_eval/videos/generation_log_<start>-<end>.json``, the modes mochi_baseline, mochi_fixed_0.04, mochi_fixed_0.12
and mochi_adaptive_0.12_0.04; without --model_dir the tiny random demo model.

    python vbench_eval/batch_generate.py --model_dir weights/ --output-dir vbench_eval/videos --generation-seed 0 \\
        --start-idx 0 --end-idx 8
"""

from genmo_teacache.batch.cli import REFERENCE_BATCH, batch_command, main

if __name__ == "__main__":
    main(batch_command, REFERENCE_BATCH)
