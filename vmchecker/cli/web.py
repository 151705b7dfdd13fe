"""``vmchecker-web``: the student and grader web interface, served by waitress.

    vmchecker-web [--config GLOBAL] [--listen 127.0.0.1:8080] [--users FILE]
                  [--ldap-url URL --ldap-base DN [--ldap-user-attr uid]
                   [--ldap-bind-dn DN --ldap-bind-password-file FILE]
                   [--ldap-cache FILE] [--ldap-cache-days 7]]
                  [--secret-file FILE] [--secure-cookies] [--trusted-proxy ADDR] [--threads 8]
                  [--connection-limit 100] [--channel-timeout 30]

    vmchecker-web --users FILE --add-user NAME < password

``--add-user`` adds NAME to the password file (or changes its password), reading the
password from the first line of stdin, stores only its argon2 hash, and exits.
``--secret-file`` holds the key that signs session cookies; it is created (mode 0600)
when missing, so sessions survive a restart.

Behind a reverse proxy every request comes from the proxy's address, so login
throttling per address would be one bucket shared by everybody. ``--trusted-proxy ADDR``
names the proxy: for requests from ADDR (only) the client's address is taken from the
last hop of ``X-Forwarded-For``; from anyone else that header is removed unread.

A request body may be as large as the largest upload any course accepts (the largest
``max_submission_size``, read at start: restart after raising one) plus
:data:`FORM_MARGIN` for the form around it; a larger Content-Length is answered 413
before the body is read, and a large body without a session 401
(:mod:`vmchecker.storer.web.gate`).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import secrets
import sys
from pathlib import Path

from vmchecker import config, confparse
from vmchecker.cli import common
from vmchecker.errors import ConfigError, NotFound, VmcheckerError
from vmchecker.storer.web import create_app, gate
from vmchecker.storer.web.ldapauth import LdapSettings
from vmchecker.storer.web.passwords import PasswordFile

log = logging.getLogger(__name__)

PROG = "vmchecker-web"
DEFAULT_LISTEN = "127.0.0.1:8080"
FORM_MARGIN = 1024 * 1024   # a multipart form's bytes beyond the archive it carries


def listen_address(value: str) -> tuple[str, int]:
    """argparse type for ``--listen HOST:PORT``."""
    try:
        return confparse.parse_host_port(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def proxy_address(value: str) -> str:
    """argparse type for ``--trusted-proxy ADDR``: one IP address, as waitress compares it."""
    try:
        return ipaddress.ip_address(value.strip("[]")).compressed
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad proxy address {value!r}: expected an IP address"
                                         " such as 127.0.0.1 or ::1") from None


def build_parser() -> argparse.ArgumentParser:
    p = common.parser(PROG, "Serve vmchecker's web interface (or add a user to its password file).")
    p.add_argument("--listen", type=listen_address, default=listen_address(DEFAULT_LISTEN), metavar="HOST:PORT",
                   help=f"where to listen (default {DEFAULT_LISTEN})")
    p.add_argument("--users", type=Path, metavar="FILE", help="password file (NAME:HASH lines)")
    p.add_argument("--add-user", metavar="NAME",
                   help="add NAME to --users (password read from stdin) and exit")
    p.add_argument("--secret-file", type=Path, metavar="FILE",
                   help="session signing key, created if missing (default: random per run)")
    p.add_argument("--secure-cookies", action="store_true", help="send cookies over HTTPS only (behind a TLS proxy)")
    p.add_argument("--trusted-proxy", type=proxy_address, metavar="ADDR",
                   help="the reverse proxy's IP address: for requests from ADDR the client's address is"
                        " taken from X-Forwarded-For (so login throttling is per client, not one bucket"
                        " for all); the header is removed from every other request. Default: no proxy,"
                        " the header is never trusted")
    p.add_argument("--threads", type=int, default=8, help="waitress worker threads (default 8)")
    p.add_argument("--connection-limit", type=int, default=gate.CONNECTION_LIMIT,
                   help=f"open connections at most (default {gate.CONNECTION_LIMIT})")
    p.add_argument("--channel-timeout", type=int, default=gate.CHANNEL_TIMEOUT,
                   help=f"seconds a silent connection is kept (default {gate.CHANNEL_TIMEOUT})")
    ldap = p.add_argument_group("LDAP")
    ldap.add_argument("--ldap-url", metavar="URL", help="ldap://HOST:PORT or ldaps://HOST:PORT")
    ldap.add_argument("--ldap-base", metavar="DN", help="search base for users")
    ldap.add_argument("--ldap-user-attr", default="uid", metavar="ATTR", help="attribute holding the user name")
    ldap.add_argument("--ldap-filter", default="(objectClass=*)", metavar="FILTER",
                      help="extra condition ANDed with the user name")
    ldap.add_argument("--ldap-bind-dn", default="", metavar="DN", help="service account (default: anonymous search)")
    ldap.add_argument("--ldap-bind-password-file", type=Path, metavar="FILE",
                      help="file holding the service account's password")
    ldap.add_argument("--ldap-cache", type=Path, metavar="FILE",
                      help="cache of successful LDAP logins, used while LDAP is down")
    ldap.add_argument("--ldap-cache-days", type=float, default=7.0, help="how long a cached login lasts")
    return p


def read_secret(path: Path | None) -> bytes | None:
    """The session key from ``path``, made (32 random bytes, mode 0600) when missing."""
    if path is None:
        return None
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        data = secrets.token_hex(32).encode()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        log.info("created session key %s", path)
    except OSError as exc:
        raise VmcheckerError(f"{path}: cannot read the session key: {exc.strerror}") from None
    if len(data.strip()) < 16:
        raise VmcheckerError(f"{path}: the session key is too short (at least 16 bytes)")
    return data.strip()


def ldap_settings(args: argparse.Namespace) -> LdapSettings | None:
    if not args.ldap_url:
        return None
    if not args.ldap_base:
        raise VmcheckerError("--ldap-url needs --ldap-base")
    password = ""
    if args.ldap_bind_password_file:
        try:
            password = args.ldap_bind_password_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise VmcheckerError(f"{args.ldap_bind_password_file}: {exc.strerror}") from None
    return LdapSettings(url=args.ldap_url, base=args.ldap_base, user_attr=args.ldap_user_attr,
                        user_filter=args.ldap_filter, bind_dn=args.ldap_bind_dn, bind_password=password,
                        cache_file=args.ldap_cache, cache_ttl=args.ldap_cache_days * 86400)


def add_user(args: argparse.Namespace) -> int:
    if args.users is None:
        raise VmcheckerError("--add-user needs --users FILE")
    password = sys.stdin.readline().rstrip("\r\n")
    PasswordFile(args.users).set(args.add_user, password)
    print(f"{args.users}: password set for {args.add_user}")
    return 0


def max_request_body(glob: config.GlobalConfig) -> int:
    """The largest upload any course's assignment accepts, plus the form around it.
    A course that does not load is left out (its pages say why)."""
    largest = 0
    for course_id in glob.courses:
        try:
            course = config.find_course(course_id, glob.path)
        except (ConfigError, NotFound) as exc:
            log.warning("course %s left out of the upload size limit: %s", course_id, exc.message)
            continue
        largest = max([largest, *(a.max_submission_size for a in course.assignments.values())])
    return largest + FORM_MARGIN


def serve(args: argparse.Namespace) -> int:
    glob = config.load_global(args.config)  # a broken global file stops us here, not on the first page
    max_body = max_request_body(glob)
    app = create_app(args.config, args.users, ldap_settings(args), read_secret(args.secret_file),
                     secure_cookies=args.secure_cookies, max_body=max_body)
    host, port = args.listen
    shown = f"[{host}]" if ":" in host else host
    print(f"{PROG}: serving http://{shown}:{port}/", flush=True)
    proxy = {}
    if args.trusted_proxy:
        proxy = {"trusted_proxy": args.trusted_proxy, "trusted_proxy_headers": {"x-forwarded-for"},
                 "clear_untrusted_proxy_headers": True}
        log.info("trusting X-Forwarded-For from %s", args.trusted_proxy)
    gate.serve(app, host, port, max_body, PROG, threads=args.threads, connection_limit=args.connection_limit,
               channel_timeout=args.channel_timeout, **proxy)
    return 0


def work(args: argparse.Namespace) -> int:
    return add_user(args) if args.add_user else serve(args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    common.setup_logging(args.verbose, args.log_format)
    return common.run(PROG, lambda: work(args), args.verbose)


if __name__ == "__main__":
    sys.exit(main())
