"""llmtwin: documents in, cited answers out — offline, on small packaged models.

Nothing heavy is imported here: `from llmtwin import Twin` is instant.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "Twin":
        from llmtwin.api import Twin

        return Twin
    raise AttributeError(name)


__all__ = ["Twin", "__version__"]
