"""One exit-code enum for every `cfnet` command (CNI mode follows the CNI error codes instead)."""

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    ERROR = 1  # anything not covered below
    USAGE = 2  # bad arguments (click's own code for usage errors)
    CONFIG = 3  # missing or invalid config file
    UNREACHABLE = 4  # could not connect, TLS failure, or timeout
    CLIENT_ERROR = 5  # the server refused the request (4xx other than auth)
    SERVER_ERROR = 6  # the server failed (5xx)
    AUTH = 7  # missing or rejected token (401/403)
    INTERRUPTED = 130


def exit_code_for_status(status: int) -> ExitCode:
    """Map an HTTP status of a failed request to the exit code the CLI returns."""
    if status in (401, 403):
        return ExitCode.AUTH
    if 400 <= status < 500:
        return ExitCode.CLIENT_ERROR
    if status >= 500:
        return ExitCode.SERVER_ERROR
    return ExitCode.OK if status < 400 else ExitCode.ERROR
