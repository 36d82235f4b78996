"""The one exception type the CLI turns into a one-line message."""


class FerError(Exception):
    """A user-facing error: one line that says what is wrong and what to do."""


class RecipeError(FerError):
    """A recipe that does not validate; the message starts with the key path."""


class PluginError(FerError):
    """A plugin that failed to load, or two plugins that clash."""


class DataError(FerError):
    """A data set that cannot be read: missing manifest, corrupt shards, bad labels."""


class CheckpointError(FerError):
    """A checkpoint file that is missing, corrupt, or of the wrong kind."""
