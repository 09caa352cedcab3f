"""Errors of the training harness."""


class UsageError(Exception):
    """A mistake in what the user asked for (unknown name, missing data, an architecture that does not fit the
    dataset, a bad checkpoint). The message is one line meant for the user; the CLI prints it and exits non-zero
    instead of showing a traceback."""
