"""The error type for problems with user-supplied data, tokenizer files and data flags.

Why a dedicated type: the command-line tools print these as one line without a traceback, while any other
exception is a bug and keeps its traceback. It subclasses ValueError so callers that only know "bad value"
still catch it.
"""


class DataInputError(ValueError):
    """A user-facing problem with an input file, an output location or a data flag.

    The message is complete on its own: it names the flag and/or the file (and line) at fault.
    """
