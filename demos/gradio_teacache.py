#! /usr/bin/env python
"""Upstream ``demos/gradio_ui.py`` with step caches: the same fields and options (``--model_dir``, ``--lora_path``,
``--cpu_offload``) plus the cache method, its modifiers, the speed preset and a comparison with the baseline.
Needs Gradio: ``pip install -e ".[ui]"``. See ``--help`` and :mod:`genmo_teacache.ui`.

    python demos/gradio_teacache.py --model_dir weights/

Without --model_dir it runs the tiny random demo model (made on first use; it makes noise).
"""

from genmo_teacache.ui import main

if __name__ == "__main__":
    main()
