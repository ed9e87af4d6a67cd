"""The single error type the converter raises for anything it refuses or cannot read."""

import json

from ..grid_layout import short_repr  # messages quote at most a glimpse of a value or file


class ConversionError(ValueError):
    """A checkpoint, option or file the converter refuses; the message names the field or file at fault.

    Subclasses `ValueError` so library callers can catch either; the CLI turns it into a non-zero exit
    with the message on stderr.
    """


def os_error_reason(error: OSError) -> str:
    """One line for an `OSError`: what failed and on which path (no traceback, no errno number)."""
    where = f" ({error.filename})" if error.filename else ""
    return f"{error.strerror or type(error).__name__}{where}"


def parse_json(raw: bytes, what: str, **json_options):
    """`json.loads` of untrusted bytes; any failure is a one-line `ConversionError` about `what` that never quotes
    the text (json's own messages give a position only)."""
    try:
        return json.loads(raw.decode("utf-8"), **json_options)
    except UnicodeDecodeError:
        raise ConversionError(f"{what} does not parse: it is not UTF-8 text.") from None
    except RecursionError:
        raise ConversionError(f"{what} does not parse: JSON nested too deeply.") from None
    except ValueError as error:
        raise ConversionError(f"{what} does not parse: {error}.") from None


__all__ = ["ConversionError", "os_error_reason", "parse_json", "short_repr"]
