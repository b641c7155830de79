"""Where weights come from: a Hugging Face folder read lazily (``hf``), and what its architecture
means in GGUF terms (``archs``: names, shapes, transforms, metadata keys; ``vocab``: the tokenizer).
GGUF inputs are read by :mod:`quantkit.ggufio`.
"""
