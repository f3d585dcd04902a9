"""The one exception family for user errors: the CLI prints the message (no traceback) and exits 2."""


class TwinError(Exception):
    """A problem the user can fix: bad config, missing model, no project, bad argument."""


class ModelNotFound(TwinError):
    pass


class ProjectNotFound(TwinError):
    pass
