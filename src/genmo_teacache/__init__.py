"""TeaCache and other step caches for Genmo's native Mochi 1 pipeline, with batch generation and evaluation."""

__version__ = "0.1.0"
