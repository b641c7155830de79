"""Jobs a user runs, each planning its output and handing it to :mod:`quantkit.engine`:
``convert`` (Hugging Face folder -> GGUF), ``quantize`` (GGUF -> GGUF with a preset) and
``imatrix`` (collect an importance matrix with torch).
"""
