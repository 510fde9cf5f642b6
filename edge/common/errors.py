"""The one exception type that reaches the user as a one-line message."""


class EdgeError(Exception):
    """A problem with the user's input (file, key, value): printed on one line, exit 2."""

    def __init__(self, message, where=None):
        self.where = where
        self.reason = message
        super().__init__(f"{where}: {message}" if where else message)
