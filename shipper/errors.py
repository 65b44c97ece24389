"""The two ways kong-ship stops on purpose; the CLI turns them into exit codes and one line on stderr."""


class ConfigError(Exception):
    """A usage or configuration problem the operator must fix: exit 2, one line, no traceback."""


class FatalError(Exception):
    """A runtime failure that retrying cannot fix (the vendor refused our credentials): exit 1."""
