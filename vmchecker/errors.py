"""One small exception hierarchy.

Every error carries the message a user should read and the exit code a command
returns for it, so each ``main()`` maps errors to output in one place.
"""


class VmcheckerError(Exception):
    """Base of every error vmchecker raises on purpose."""

    exit_code = 1

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ConfigError(VmcheckerError):
    """A configuration file is missing, unreadable or invalid.

    The message names the file, the key path and what is wrong.
    """

    exit_code = 2

    def __init__(self, file, key: str, reason: str):
        where = f"{file}" + (f": {key}" if key else "")
        super().__init__(f"{where}: {reason}")
        self.file = file
        self.key = key
        self.reason = reason


class NotFound(VmcheckerError):
    """A course, assignment, account or submission that does not exist."""

    exit_code = 4


class SubmissionRefused(VmcheckerError):
    """An upload was refused (time window, deadline, interval, size, hidden...).

    Nothing was written when this is raised.
    """

    exit_code = 3


class ArchiveError(SubmissionRefused):
    """An archive is not a zip/tar.gz, or is hostile (traversal, links, bombs)."""


class BundleError(VmcheckerError):
    """A bundle is malformed or names something the tester does not know."""

    exit_code = 5


class ExecutorError(VmcheckerError):
    """A guest could not be prepared, started or driven."""

    exit_code = 6


class TransportError(VmcheckerError):
    """The storer could not reach a tester over SSH/SFTP."""

    exit_code = 7


class RpcError(VmcheckerError):
    """An XML-RPC call failed, or was refused by the daemon."""

    exit_code = 8
