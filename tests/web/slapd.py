"""A real OpenLDAP server (Debian's ``slapd``) for tests, on a free loopback port.

Each :class:`Slapd` has its own ``slapd.conf``, mdb database, pid file and socket in a
temporary folder; the directory is loaded with ``slapadd`` before start:
``dc=vmchecker,dc=test`` with ``ou=people`` (users under it, ``uid`` + ``userPassword``
hashed by ``slappasswd``) and a service account ``cn=reader`` allowed to search.
Anonymous binds may search too, so both ways of finding a user can be tested.
``groups`` adds groupOfNames entries under ``ou=groups`` (``member``: the users'
DNs), ``posix_groups`` posixGroup entries (``memberUid``: their names).
``extra_conf`` adds global ``slapd.conf`` lines (e.g. ``disallow bind_simple``, which
makes slapd answer every user bind with ``unwillingToPerform``).

``Slapd(...)`` removes its folder itself if loading fails; once made, use it as a
context manager (or call ``close()``) so the folder goes even when ``start()`` fails.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from tests.util import stop_process, wait_for_port

SLAPD = "/usr/sbin/slapd"
SLAPADD = "/usr/sbin/slapadd"
SLAPPASSWD = "/usr/sbin/slappasswd"
SUFFIX = "dc=vmchecker,dc=test"
PEOPLE = f"ou=people,{SUFFIX}"
GROUPS = f"ou=groups,{SUFFIX}"
READER_DN = f"cn=reader,{SUFFIX}"
READER_PASSWORD = "reader-pw"
READY_WAIT = 15.0

CONF = """\
{extra}
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/nis.schema
include /etc/ldap/schema/inetorgperson.schema
pidfile {dir}/slapd.pid
argsfile {dir}/slapd.args
modulepath /usr/lib/ldap
moduleload back_mdb
database mdb
maxsize 16777216
suffix "{suffix}"
rootdn "cn=admin,{suffix}"
rootpw {rootpw}
directory {dir}/db
access to attrs=userPassword by anonymous auth by self read by * none
access to * by * read
"""


def available() -> str | None:
    """Why slapd cannot run here (a skip reason), or None."""
    for tool in (SLAPD, SLAPADD, SLAPPASSWD):
        if not os.access(tool, os.X_OK):
            return f"{tool} is missing (apt-get install slapd ldap-utils)"
    return None


def hashed(password: str) -> str:
    return subprocess.run([SLAPPASSWD, "-s", password], check=True, capture_output=True,
                          text=True).stdout.strip()


def _entry(dn: str, *lines: str) -> str:
    return "\n".join([f"dn: {dn}", *lines]) + "\n\n"


class Slapd:
    """``with Slapd(users={"carol": "pw"}) as s: s.start()``; ``stop()``, ``close()``; ``url``;
    ``group_dn(cn)`` names a group of ``groups`` or ``posix_groups``."""

    def __init__(self, users: dict[str, str], extra_conf: str = "", groups: dict[str, list[str]] | None = None,
                 posix_groups: dict[str, list[str]] | None = None):
        self.dir = Path(tempfile.mkdtemp(prefix="vmck-slapd-"))
        self.proc: subprocess.Popen | None = None
        self.log = None
        try:
            (self.dir / "db").mkdir()
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.port = s.getsockname()[1]
            self.url = f"ldap://127.0.0.1:{self.port}"
            self.conf = self.dir / "slapd.conf"
            self.conf.write_text(CONF.format(dir=self.dir, suffix=SUFFIX, rootpw=hashed("root-pw"),
                                             extra=extra_conf))
            self._load(users, groups or {}, posix_groups or {})
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    @staticmethod
    def group_dn(cn: str) -> str:
        return f"cn={cn},{GROUPS}"

    def __enter__(self) -> Slapd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _load(self, users: dict[str, str], groups: dict[str, list[str]], posix_groups: dict[str, list[str]]) -> None:
        ldif = _entry(SUFFIX, "objectClass: dcObject", "objectClass: organization", "o: vmchecker", "dc: vmchecker")
        ldif += _entry(PEOPLE, "objectClass: organizationalUnit", "ou: people")
        ldif += _entry(READER_DN, "objectClass: organizationalRole", "objectClass: simpleSecurityObject",
                       "cn: reader", f"userPassword: {hashed(READER_PASSWORD)}")
        for uid, password in users.items():
            ldif += _entry(f"uid={uid},{PEOPLE}", "objectClass: inetOrgPerson", f"uid: {uid}", f"cn: {uid}",
                           f"sn: {uid}", f"userPassword: {hashed(password)}")
        if groups or posix_groups:
            ldif += _entry(GROUPS, "objectClass: organizationalUnit", "ou: groups")
        for cn, members in groups.items():   # groupOfNames needs one member at least
            ldif += _entry(f"cn={cn},{GROUPS}", "objectClass: groupOfNames", f"cn: {cn}",
                           *(f"member: uid={m},{PEOPLE}" for m in members))
        for gid, (cn, members) in enumerate(posix_groups.items(), 5000):
            ldif += _entry(f"cn={cn},{GROUPS}", "objectClass: posixGroup", f"cn: {cn}", f"gidNumber: {gid}",
                           *(f"memberUid: {m}" for m in members))
        (self.dir / "data.ldif").write_text(ldif)
        subprocess.run([SLAPADD, "-f", str(self.conf), "-l", str(self.dir / "data.ldif")],
                       check=True, capture_output=True)

    def start(self) -> None:
        """Run slapd in the foreground (``-d 0``) and wait until the port answers."""
        self.log = open(self.dir / "slapd.log", "wb")
        self.proc = subprocess.Popen([SLAPD, "-f", str(self.conf), "-h", f"{self.url}/", "-d", "0"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        try:
            wait_for_port(self.proc, self.port, READY_WAIT, "slapd")
        except RuntimeError as exc:
            log = self.read_log()
            self.stop()
            raise RuntimeError(f"{exc}: {log}") from None

    def read_log(self) -> str:
        return (self.dir / "slapd.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        self.proc = None
        if self.log is not None:
            self.log.close()
            self.log = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
