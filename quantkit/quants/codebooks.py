"""Codebooks of the IQ types, taken from the ``gguf`` package (which ships them for dequantizing).

Values are the same numbers as llama.cpp's tables (``iq2xxs_grid`` ... ``iq1s_grid``,
``ksigns_iq2xs``, ``kvalues_iq4nl``), unpacked to one small integer per element.
"""

import functools

import numpy as np
from gguf import quants as gguf_quants


@functools.cache
def grid(type_name: str) -> np.ndarray:
    """The codebook of an IQ type as int16, shape (entries, elements per entry).

    IQ2_XXS/IQ2_XS/IQ2_S: entries of 8 magnitudes from {8, 25, 43}; IQ3_XXS/IQ3_S: entries of 4
    magnitudes; IQ1_S/IQ1_M: entries of 8 values from {-1, 0, 1}.
    """
    cls = getattr(gguf_quants, type_name)
    cls.init_grid()
    values = np.asarray(cls.grid).reshape(cls.grid_shape).astype(np.int16)
    values.setflags(write=False)
    return values


@functools.cache
def ksigns() -> np.ndarray:
    """``ksigns_iq2xs``: 128 sign bytes, 7 bits of signs + an even-parity 8th bit (uint8)."""
    values = np.frombuffer(gguf_quants.IQ2_XXS.ksigns, dtype=np.uint8).copy()
    values.setflags(write=False)
    return values


@functools.cache
def iq4nl_values() -> np.ndarray:
    """``kvalues_iq4nl``: the 16 non-linear levels of IQ4_NL / IQ4_XS (int8)."""
    values = np.array(gguf_quants.IQ4_NL.kvalues, dtype=np.int8)
    values.setflags(write=False)
    return values
