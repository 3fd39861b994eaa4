"""The benchmark: the hand-written backward against ``jax.grad`` and PyTorch, side by side.

``python -m jaxbp bench`` is :mod:`jaxbp.bench.cli`; the measuring is in :mod:`jaxbp.bench.run`.
"""
