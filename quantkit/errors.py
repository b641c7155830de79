"""Errors quantkit raises for user mistakes.

Every error carries one line that says what is wrong and where (file, tensor, row). The CLI prints
that line and exits with status 2; library users catch :class:`QuantkitError`.
"""


MESSAGE_LIMIT = 200  # characters in one error line


def first_line(error: BaseException, limit: int = 100) -> str:
    """The first line of another library's exception, at most ``limit`` characters, printable ASCII
    (other characters escaped): safe to embed in a quantkit error's one line."""
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else type(error).__name__
    text = text.encode("ascii", "backslashreplace").decode("ascii")
    return text if len(text) <= limit else text[: limit - 3] + "..."


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


class HessianError(QuantkitError):
    """A second-moment (hessian) matrix that does not fit its tensor: shape, non-finite, not positive."""


class OutputError(QuantkitError):
    """An output path that cannot be written (exists, same as an input, disk full, ...)."""


class MissingExtraError(QuantkitError):
    """A command or function needs an optional dependency group (``pip install 'quantkit[NAME]'``)."""


class FP8Error(QuantkitError):
    """A quantized checkpoint quantkit cannot read: an FP8 scale that does not fit its weight, another method."""
