#! /usr/bin/env python
"""Upstream ``demos/cli.py`` with TeaCache: the same options plus the cache's. See ``--help``.

    python demos/cli_teacache.py --model_dir weights/ --teacache_thresh_low 0.04 --teacache_thresh_high 0.12

Without --model_dir it runs the tiny random demo model (made on first use; it makes noise).
"""

from genmo_teacache.generate_cli import generate_command

if __name__ == "__main__":
    generate_command()
