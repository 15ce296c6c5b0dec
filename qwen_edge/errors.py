"""User-facing errors: the CLI prints their message as one line and exits with code 2."""


class QwenEdgeError(Exception):
    """Bad input or an unsupported model; the message is shown to the user as is."""
