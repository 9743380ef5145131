"""The failures vglaw expects: bad input from the user, and a training run that has to stop.

The command line reports these in one line (exit status 2); any other exception is a bug and
keeps its traceback.
"""


class VglawError(Exception):
    """An expected failure, with a message that says what to fix."""


class InputError(VglawError, ValueError):
    """A file, config, checkpoint, image or expression that vglaw cannot use; names it."""


class InputTypeError(InputError, TypeError):
    """A config or checkpoint value of the wrong type; names the key."""
