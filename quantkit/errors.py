"""Errors quantkit raises for user mistakes.

Every error carries one line that says what is wrong and where (file, tensor, row). The CLI prints
that line and exits with status 2; library users catch :class:`QuantkitError`.
"""


class QuantkitError(Exception):
    """Base class: a problem with the user's input or request, reported in one line."""


class GGUFFormatError(QuantkitError):
    """A file is not valid GGUF: bad magic, truncated, counts or offsets past the end, ..."""


class UnsupportedTypeError(QuantkitError):
    """A tensor type quantkit does not know or cannot (yet) quantize/dequantize."""


class ShapeError(QuantkitError):
    """A row length or shape the requested type cannot take."""


class NonFiniteError(QuantkitError):
    """NaN or Inf in weights or in an importance matrix."""


class ImatrixError(QuantkitError):
    """An importance matrix that is missing, of the wrong length or invalid."""


class OutputError(QuantkitError):
    """An output path that cannot be written (exists, same as an input, disk full, ...)."""


class FP8Error(QuantkitError):
    """A quantized checkpoint quantkit cannot read: an FP8 scale that does not fit its weight, another method."""
