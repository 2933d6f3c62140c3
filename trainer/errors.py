"""Errors a user can act on. The CLI prints them as one line and exits 2; never a traceback."""


class UserError(Exception):
    """Something the user gave us is wrong (a file, an argument, a dataset name)."""


class DataError(UserError):
    """A data file is malformed. The message names the file, the row and what is wrong."""


class TrainingError(UserError):
    """Training could not produce a usable model (NaN loss, empty data)."""
