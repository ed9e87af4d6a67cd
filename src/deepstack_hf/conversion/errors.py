"""The single error type the converter raises for anything it refuses or cannot read."""

from ..grid_layout import short_repr  # messages quote at most a glimpse of a value or file


class ConversionError(ValueError):
    """A checkpoint, option or file the converter refuses; the message names the field or file at fault.

    Subclasses `ValueError` so library callers can catch either; the CLI turns it into a non-zero exit
    with the message on stderr.
    """


__all__ = ["ConversionError", "short_repr"]
