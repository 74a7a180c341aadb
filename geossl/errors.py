"""Exceptions shared by every layer (the bottom of the import layers)."""


class ConfigError(ValueError):
    """A config field has a value the run cannot use; the message names its config path."""


class DataConfigMismatchError(ValueError):
    """A training record does not fit the config (e.g. its label count is not
    ``config.data.num_classes``); the message names the record and the config field."""
