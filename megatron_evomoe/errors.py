"""The one error type for problems with what the user gave: flags, configs, input files, checkpoints.

Why a dedicated type: the entry points print these as one line without a traceback and exit non-zero,
while any other exception is a bug and keeps its traceback. It subclasses ValueError so callers that
only know "bad value" still catch it. ``data.errors.DataInputError`` (data files and data flags) and
``training.checkpointing.CheckpointError`` (unusable checkpoints) are its subclasses.
"""


class InputError(ValueError):
    """A user-facing problem with a flag, a config value, an input file or a checkpoint.

    The message is complete on its own: one line that names the flag and/or the file at fault.
    """
