"""Errors the media layer raises for a caller's mistake (never for its own bugs).

Their messages are safe to show to the client that caused them: they name the
offending field or id, never server internals.
"""


class MediaError(Exception):
    """Base class of the media layer's caller-facing errors."""


class InvalidStateError(MediaError):
    """The object is closed, or not in a state that allows the call."""


class UnsupportedError(MediaError):
    """The parameters ask for something this SFU does not support (codec, ...)."""


class InvalidParametersError(MediaError, ValueError):
    """The parameters are malformed (wrong type, missing field, bad value)."""
