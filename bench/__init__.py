"""Benchmark scripts (not tests): run from the repository root as ``python -m bench.<name>``,
so ``bench._common``, ``scripts.generate_corpus`` and ``tr111`` import without sys.path edits."""
