"""The one exception type users see as a single line (the CLI prints it without a traceback)."""


class FMError(Exception):
    """A problem with the user's input or environment, with a message that says what to do."""
