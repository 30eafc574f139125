"""Evaluation of cached generation against the uncached baseline.

Data flows one way: videos -> :mod:`.fidelity` (PSNR/SSIM/LPIPS against the baseline) and :mod:`.vbench_runner`
(VBench, run in its own virtual environment by :mod:`.vbench_env`) -> result files -> :mod:`.scoring`,
:mod:`.timing` -> :mod:`.tables` and :mod:`.plots`. :mod:`.cli` strings these together as ``genmo-teacache evaluate``.
Every number in a table is read back from a result file, so a table can always be rebuilt from the files alone.
"""
