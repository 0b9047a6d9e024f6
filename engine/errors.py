"""The one exception type the CLI turns into a one-line error and a non-zero exit."""


class KneuronError(Exception):
    """A user-facing error: bad input, missing file, incompatible checkpoint, bad SQL.

    The message must be one line that names the problem (and the offending path or value).
    """
