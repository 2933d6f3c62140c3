"""The error every model raises for input it cannot use."""


class ModelInputError(ValueError):
    """Bad input to a model (wrong width, empty matrix, a user it cannot serve)."""
