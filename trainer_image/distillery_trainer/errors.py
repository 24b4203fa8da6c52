"""Errors the trainer reports to the user as one clear line."""


class InputError(ValueError):
    """Bad input (spec, teacher, data): the message names what is wrong and where."""


class NonFiniteError(InputError):
    """A loss, output or metric became NaN or infinite: the inputs or the recipe (learning rate)
    are at fault, so retrying the same job cannot help (exit 2, like other invalid input)."""
