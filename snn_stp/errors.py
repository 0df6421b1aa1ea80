"""The project's exception types: expected failures whose message names the file or key and the fix.

``snn-stp`` prints any :class:`SnnStpError` as one line on stderr and exits non-zero; anything
else is a bug and keeps its traceback. The pruning core (``snn_stp.pruning``) imports torch only
and raises the built-in ``ValueError``/``TypeError``; the training code turns those into
:class:`ConfigError` where they come from a configuration value.
"""

from __future__ import annotations


class SnnStpError(Exception):
    """An expected failure (bad input, missing or damaged file, unusable device)."""


class ConfigError(SnnStpError, ValueError):
    """A configuration that cannot run; the message says what is wrong and what is valid."""


class UsageError(SnnStpError, ValueError):
    """A command or function argument that names something that does not exist (a layer, a sample)."""


class RunDirectoryError(SnnStpError):
    """A run directory that cannot be used as asked (holds another run, unwritable, incomplete)."""


class CheckpointError(SnnStpError):
    """A checkpoint file that is missing, truncated, corrupt or not a checkpoint of this kind."""


class DataError(SnnStpError):
    """A data file that cannot be read or holds impossible values (named in the message)."""


class DatasetNotFoundError(DataError, FileNotFoundError):
    """A data set is not where it was looked for; the message lists the files and their source."""


class DeviceError(SnnStpError):
    """A device or kernel backend asked for that cannot run on this machine (with the real cause)."""


class TrainingDiverged(SnnStpError, RuntimeError):
    """The loss became NaN or infinite; the message names the last good checkpoint."""


class TrainingInterrupted(SnnStpError):
    """A stop signal (Ctrl-C's SIGINT, SIGTERM, or SIGUSR2, which Slurm sends before a time limit)
    stopped training at a step boundary; a checkpoint was saved. ``signal_number`` is that signal:
    a command stopped by it exits with 128 + it, as a shell reports a process the signal ended."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.signal_number = signal_number


class SnnStpWarning(UserWarning):
    """Something was read around or repaired (a torn line, a regenerated file); ``snn-stp`` prints it
    as one ``snn-stp: warning:`` line."""
