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


class Refused(VmcheckerError):
    """The other side understood the request and refused it: asking again with the
    same request cannot help. Each subclass says what was refused."""


class SubmissionRefused(Refused):
    """An upload was refused (time window, deadline, interval, size, hidden...).

    Nothing was written when this is raised.
    """

    exit_code = 3


class GradeRefused(Refused):
    """A grader's lines or edited grade file were refused (not a number and a reason, or
    the submission is still being tested). Nothing was written when this is raised."""

    exit_code = 3


class ArchiveError(SubmissionRefused):
    """An archive is not a zip/tar.gz, or is hostile (traversal, links, bombs)."""


class BundleError(VmcheckerError):
    """A bundle is malformed or names something the tester does not know."""

    exit_code = 5


class JobStateError(VmcheckerError):
    """A journal transition was asked of a job that is not in a state that allows it."""


class ExecutorError(VmcheckerError):
    """A guest could not be prepared, started or driven."""

    exit_code = 6


class TransportError(VmcheckerError):
    """The storer could not reach a tester over SSH/SFTP."""

    exit_code = 7


class ResultRefused(Refused, TransportError):
    """A result file the tester named was refused: a bad name, a link, not a
    regular file, missing, or too big. Nothing of the fetch was kept."""


class RpcError(VmcheckerError):
    """An XML-RPC call failed, or was refused by the daemon."""

    exit_code = 8


class CallRefused(Refused, RpcError):
    """An XML-RPC call the daemon refuses: raised by a method on the server (logged,
    answered with a refusal fault, nothing written) and by the client when the daemon
    answered with one. Retrying the same call cannot help."""


class TryLater(RpcError):
    """The call cannot be completed now (e.g. the results could not be pulled yet):
    the caller keeps it and retries, exactly as if the daemon had not answered."""


class LdapUnavailable(VmcheckerError):
    """LDAP could not be reached or did not answer: the login cache may decide."""

    exit_code = 9


class Interrupted(BaseException):
    """The executor was told to stop (SIGTERM): clean the guest up and leave.

    A ``BaseException`` on purpose, like ``KeyboardInterrupt``: a job's failure boundary
    (``except Exception``) must not swallow it."""
