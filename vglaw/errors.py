"""The failures vglaw expects: bad input from the user, a missing optional extra, and a training
run that has to stop.

The command line reports these in one line (exit status 2); any other exception is a bug and
keeps its traceback. Each also derives from the built-in exception a caller would catch
(ValueError, FileNotFoundError, OSError, ImportError, pickle.UnpicklingError).
"""
import pickle


class VglawError(Exception):
    """An expected failure, with a message that says what to fix."""


class InputError(VglawError, ValueError):
    """A file, config, checkpoint, image or expression that vglaw cannot use; names it."""


class InputTypeError(InputError, TypeError):
    """A config or checkpoint value of the wrong type; names the key."""


class MissingFileError(InputError, FileNotFoundError):
    """A file or folder that vglaw needs is not there; names it."""


class UnreadableFileError(InputError, OSError):
    """A file that is there but cannot be read as what it should be (an image, say); names it."""


class UnsafePickleError(InputError, pickle.UnpicklingError):
    """A pickle that would rebuild something other than plain data; refused before it runs."""


class MissingExtraError(VglawError, ImportError):
    """An optional dependency is not installed; says which ``pip install`` brings it."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what the command kept and how to continue (the command line says it in one
    line, exit status 130, as for any Ctrl-C)."""
