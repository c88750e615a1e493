"""Errors that describe bad input (config, data, model output) rather than a bug in esft.

The CLI prints these as one line; anything else keeps its traceback.
"""


class EsftError(ValueError):
    """Bad input, reported to the user in one line."""
