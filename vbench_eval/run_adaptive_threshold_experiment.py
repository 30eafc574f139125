#!/usr/bin/env python3
"""The adaptive-threshold mini-experiment: the same command as ``genmo-teacache sweep`` (see docs/BATCH.md).

    python vbench_eval/run_adaptive_threshold_experiment.py --model_dir weights/ --metric psnr
"""

from genmo_teacache.batch.cli import main, sweep_command

if __name__ == "__main__":
    main(sweep_command)
