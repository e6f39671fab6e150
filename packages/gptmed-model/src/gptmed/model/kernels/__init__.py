"""Hand-written kernels. Import :mod:`gptmed.model.kernels.triton_attention` lazily: it needs triton."""

__all__: list[str] = []
