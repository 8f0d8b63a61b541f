"""User-facing errors: the CLI prints these as one line and exits nonzero, without a traceback."""


class FastVARError(Exception):
    """A problem with the user's input (files, arguments, schedules), not a bug in fastvar."""


class CheckpointError(FastVARError):
    """A checkpoint file is missing, unreadable, or belongs to another model or size."""
