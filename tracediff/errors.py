"""User-facing errors: one clear line, exit status 2 on the command line."""


def first_line(exc, default=None) -> str:
    """The first line of ``exc``'s message; ``default`` (else the exception's type name) when
    the message is empty."""
    text = str(exc)
    if text:
        return text.splitlines()[0]
    return type(exc).__name__ if default is None else default


class TraceDiffError(Exception):
    """Bad input or an unusable file. The message is one line: what, where, what to do."""


class TraceFormatError(TraceDiffError):
    """The file is not a readable tracediff trace."""


class IncompleteTraceWarning(UserWarning):
    """The trace was not closed cleanly; records up to the last complete one are readable."""
