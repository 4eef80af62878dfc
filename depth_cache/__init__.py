"""Stage one: frozen depth estimators, the shared depth cache, and the precompute job.

Knows nothing of stage two (`pipeline/`).
"""
