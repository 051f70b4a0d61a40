"""The one exception type users see as a single line (the CLI prints it and exits 1)."""


class AugmatError(Exception):
    """A problem with the user's input or environment, explained in one line that
    says what to do. Anything else escaping augmat is a bug."""
