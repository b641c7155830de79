"""Output files written atomically, with the permissions any new file gets.

An output is written under a unique hidden name beside its final path (``.<name>.tmp-<random>``) and
renamed over it once complete, so a reader never sees half a file and two writers never share a
temporary file. The temporary file is created with mode 0666 less the process umask (0644 under the
usual umask 022), as ``open()`` would create it, not with ``tempfile.mkstemp``'s 0600.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from .errors import OutputError

TEMP_MARK = ".tmp-"  # in every temporary file's name


def create_temp(path) -> tuple[int, Path]:
    """A new empty file beside ``path`` under a unique hidden name: (file descriptor open for writing, its path)."""
    path = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}{TEMP_MARK}{secrets.token_hex(6)}")
        try:
            return os.open(tmp, flags, 0o666), tmp  # the kernel applies the umask
        except FileExistsError:
            continue
        except OSError as e:
            raise OutputError(f"{path}: cannot write: {e.strerror or e}") from None
    raise OutputError(f"{path}: cannot write: no unused temporary name beside it")


def write_atomic(path, content: bytes | str) -> Path:
    """Write ``content`` (text is UTF-8) to ``path`` atomically: a temporary file, fsync, rename."""
    path = Path(path)
    data = content.encode("utf-8") if isinstance(content, str) else bytes(content)
    fd, tmp = create_temp(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            raise OutputError(f"{path}: cannot write: {e.strerror or e}") from None
        raise
    return path
