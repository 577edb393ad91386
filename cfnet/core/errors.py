"""Error types shared by every layer. Messages are written for operators: one line, naming the cause."""


class CfnetError(Exception):
    """Base of every error cfnet raises on purpose (anything else is a bug)."""


class ConfigError(CfnetError):
    """A config file is missing, unreadable, or has an unknown or invalid key."""


class StoreError(CfnetError):
    """The database failed or refused an operation."""


class TagsExhaustedError(StoreError):
    """No free tag is left for a new group."""
