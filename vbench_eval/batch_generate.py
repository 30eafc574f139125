#!/usr/bin/env python3
"""Batch generation for the VBench evaluation: the same command as ``genmo-teacache batch`` (see docs/BATCH.md).

    python vbench_eval/batch_generate.py --model_dir weights/ --modes baseline,fixed_0.04,fixed_0.12,adaptive_0.12_0.04
"""

from genmo_teacache.batch.cli import batch_command, main

if __name__ == "__main__":
    main(batch_command)
