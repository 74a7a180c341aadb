"""Exceptions shared by every layer (the bottom of the import layers)."""


class ConfigError(ValueError):
    """A config field has a value the run cannot use; the message names its config path."""
