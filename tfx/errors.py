"""The exception types every layer raises. Each is a user's mistake: the CLI prints it as one line
and exits with 2 (see ``tfx.cli``). Also how a signal ends a command."""

import signal
import threading
from contextlib import contextmanager


class TfxError(ValueError):
    """Bad input, config, checkpoint or recipe: the message names the file and the fix."""


class InputError(TfxError):
    """A data file or option the user gave cannot be used as it is."""


class ConfigError(TfxError):
    """A model or data configuration tfx cannot build."""


class CheckpointError(TfxError):
    """A checkpoint directory that is not one tfx can read."""


class VocabError(TfxError):
    """A gene embedding file or vocabulary that cannot be read."""


class RecipeError(TfxError):
    """A recipe that does not compose, validate or build."""


class RegistryError(ConfigError, KeyError):
    """A component name that no registry holds (from a recipe, a checkpoint or an option); the
    message lists the registered names. Also a KeyError, for callers that look names up."""

    __str__ = TfxError.__str__  # KeyError's would quote the message


class Interrupted(Exception):
    """A run stopped by a signal after saving what it needs to resume; ``code`` is the exit code
    (128 + the signal's number: 130 for Ctrl-C, 143 for SIGTERM)."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a batch system's time limit) ended a command as Ctrl-C does: its cleanup ran,
    and the CLI prints one line and exits 143."""


def _raise_terminated(signum, frame):
    raise Terminated


@contextmanager
def sigterm_ends_as_ctrl_c():
    """Within it, SIGTERM raises ``Terminated`` in the main thread (training installs its own handler
    while it fits, which saves a checkpoint first)."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
