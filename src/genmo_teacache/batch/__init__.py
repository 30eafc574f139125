"""Batch generation for evaluation: prompt files, jobs (prompt x mode x sample), resumable local and Ray runners,
and the threshold sweep. Modules, in the order data flows:

- ``prompts``: prompt files (VBench JSON or text) and the 33-prompt VBench subset builder
- ``naming``: prompts as file stems, modes as folder names
- ``jobs``: jobs, output layout, cost model, cost-balanced splitting
- ``state``: finished jobs, stale temporary files, the generation log, latency summaries
- ``execute``: one job on a loaded pipeline
- ``runner`` / ``ray_runner``: run a plan in this process or on Ray workers
- ``sweep``: the threshold mini-experiment
- ``cli``: the ``batch`` and ``sweep`` commands

See docs/BATCH.md.
"""
