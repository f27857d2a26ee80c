"""The error type for problems with user-supplied data, tokenizer files and data flags.

A subclass of the project's :class:`~megatron_evomoe.errors.InputError`: the command-line tools and
training scripts print it as one line without a traceback, while any other exception is a bug and
keeps its traceback.
"""

from megatron_evomoe.errors import InputError


class DataInputError(InputError):
    """A user-facing problem with an input file, an output location or a data flag.

    The message is complete on its own: it names the flag and/or the file (and line) at fault.
    """
