"""Exceptions that the command line turns into a one-line message and exit code 1."""
import re


class PixelwiseError(Exception):
    """Base class: an error a user can act on (bad input, missing file, bad config)."""


class DataError(PixelwiseError):
    """A problem with a data file; the message names the file."""


class ConfigError(PixelwiseError):
    """A problem with a run config or dataset spec; the message names the key."""


class CheckpointError(PixelwiseError):
    """A checkpoint that cannot be read or does not match the model."""


def worker_message(message: str) -> str:
    """The original message of an error that a DataLoader worker raised, without the worker's
    traceback; other messages unchanged.

    PyTorch re-raises a worker's exception in the main process with the message
    ``Caught DataError in DataLoader worker process 0.`` followed by the worker's traceback,
    whose last lines are ``pixelwise.errors.DataError: <the message>``.
    """
    head = re.match(r"Caught (\w+) in (DataLoader worker process \d+)\.\nOriginal Traceback",
                    message)
    if head is None:
        return message
    lines = re.findall(rf"^(?:[\w.]+\.)?{head.group(1)}: (.*)$", message, flags=re.MULTILINE)
    if not lines:
        return message
    start = message.rfind(f"{head.group(1)}: {lines[-1]}") + len(head.group(1)) + 2
    return f"{message[start:].rstrip()} (in {head.group(2)})"
