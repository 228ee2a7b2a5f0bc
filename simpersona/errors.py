"""The project's error types: a configuration that cannot be used (ConfigError), and the input and
storage family (DataError), so a caller can catch every input problem with `except DataError`.

Each message is one line naming the path; the library exception is folded into that line rather
than left as a deep traceback."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config file, override or setting that cannot be used; the message says which and why."""


class DataError(ValueError):
    """Input data that cannot be used; the message is one line naming the file and the problem."""


class InputNotFoundError(DataError):
    pass


class UnsupportedInputError(DataError):
    """Unsupported URI scheme, file format or configuration of the reader."""


class InputFormatError(DataError):
    """The file parses, but not into the expected columns (missing columns, wrong delimiter)."""


class EncodingError(DataError):
    pass


class CorruptFileError(DataError):
    """Truncated or otherwise unreadable file."""


class EmptyInputError(DataError):
    pass


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
