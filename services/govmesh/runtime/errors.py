"""Errors that stop a process at start-up with a message instead of a traceback."""


class ConfigurationError(Exception):
    """Settings, files or peers that a service cannot start with.

    The message is shown to the operator as is: it names what is wrong and,
    where it can, how to fix it.
    """
