"""The one exception type that reaches the user as a one-line message."""


def _one_line(text):
    """Control characters (a newline in a YAML key, a file name) shown escaped, never as a break."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class EdgeError(Exception):
    """A problem with the user's input (file, key, value): printed on one line, exit 2."""

    def __init__(self, message, where=None):
        self.where = where
        self.reason = message
        text = f"{where}: {message}" if where else message
        super().__init__(_one_line(text))
