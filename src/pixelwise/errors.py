"""Exceptions that the command line turns into a one-line message and exit code 1."""


class PixelwiseError(Exception):
    """Base class: an error a user can act on (bad input, missing file, bad config)."""


class DataError(PixelwiseError):
    """A problem with a data file; the message names the file."""


class ConfigError(PixelwiseError):
    """A problem with a run config or dataset spec; the message names the key."""


class CheckpointError(PixelwiseError):
    """A checkpoint that cannot be read or does not match the model."""
