"""User-facing errors: the CLI prints their message as one line and exits with code 2.

Every error the API raises on bad input is a `QwenEdgeError`; the subclasses let a caller tell the common
kinds apart without parsing messages. The message is the same one the CLI prints after `error:`.
"""


class QwenEdgeError(Exception):
    """Bad input or an unsupported model; the message is shown to the user as is."""


class SourceError(QwenEdgeError):
    """A model source (folder, hub id, GGUF, checkpoint) that is missing, damaged or inconsistent."""


class ArtifactError(QwenEdgeError):
    """An artifact folder that is missing, not ours, or whose files do not match its manifest."""


class OutputError(QwenEdgeError):
    """An output that may not be written: it exists, it is the source, or another writer holds it."""


class InputError(QwenEdgeError):
    """A bad option, prompt or request value."""


class Interrupted(BaseException):
    """SIGTERM or SIGHUP arrived: unwinds like Ctrl-C so staged outputs are cleaned up.

    A BaseException (like KeyboardInterrupt), so `except Exception` blocks do not swallow it.
    """

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
