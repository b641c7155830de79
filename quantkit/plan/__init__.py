"""Planning: which type each tensor gets, before any weight is read.

``presets`` (llama-quantize's per-tensor rules), ``overrides`` (the ``--tensor-type REGEX=TYPE``
grammar) and ``imatrix_file`` (llama.cpp's importance-matrix files, whose entries steer both the
rules and the quantizers).
"""
