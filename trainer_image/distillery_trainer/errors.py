"""Errors the trainer reports to the user as one clear line."""


class InputError(ValueError):
    """Bad input (spec, teacher, data): the message names what is wrong and where."""
