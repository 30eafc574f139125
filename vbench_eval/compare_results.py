#!/usr/bin/env python3
"""Comparison tables, results JSON and plots from existing results (reference entry point; see docs/EVALUATION.md).

    python3 vbench_eval/compare_results.py --scores-dir vbench_eval/vbench_scores \
        --fidelity-dir vbench_eval/fidelity_metrics --gen-log-dir vbench_eval/videos \
        --output-json vbench_eval/all_comparison_results.json [--baseline mochi_baseline] [--modes a,b]

Without --baseline, the one mode whose name contains "baseline"; --gen-log-dir may be the logs folder, or the batch
run's output or videos folder (its logs/ is found).
"""

from genmo_teacache.eval.cli import compare_command

if __name__ == "__main__":
    compare_command()
