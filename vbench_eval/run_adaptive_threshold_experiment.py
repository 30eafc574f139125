#!/usr/bin/env python3
"""The adaptive-threshold mini-experiment: ``genmo-teacache sweep`` with the reference workflow's defaults (see
docs/BATCH.md): videos in ``vbench_eval/videos_threshold_experiment/`` (mochi_baseline, mochi_adaptive_c1 .. c4).

    python vbench_eval/run_adaptive_threshold_experiment.py --model_dir weights/ --metric psnr
    CUDA_VISIBLE_DEVICES=0 python3 vbench_eval/run_adaptive_threshold_experiment.py --model_dir weights/ \\
        --seed 0 --gpu-id 0 --total-gpus 4      # the reference's per-GPU form ([--dry-run], [--start-idx N])

The chosen candidate ends up in <output-dir>/best_config.json and best_modes.txt (the --modes of the full batch).
"""

from genmo_teacache.batch.cli import REFERENCE_SWEEP, main, sweep_command

if __name__ == "__main__":
    main(sweep_command, REFERENCE_SWEEP)
