"""User-facing errors: one clear line, exit status 2 on the command line."""


class TraceDiffError(Exception):
    """Bad input or an unusable file. The message is one line: what, where, what to do."""


class TraceFormatError(TraceDiffError):
    """The file is not a readable tracediff trace."""


class IncompleteTraceWarning(UserWarning):
    """The trace was not closed cleanly; records up to the last complete one are readable."""
