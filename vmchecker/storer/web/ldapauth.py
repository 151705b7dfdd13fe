"""LDAP logins through ldap3: find the user's entry, then bind as that entry.

The search binds as a service account (``bind_dn`` + password) or anonymously, with
the user name escaped into the filter, so ``*`` or ``)(`` in a name match nothing.
An empty password is refused before anything is sent: an LDAP "simple bind" with a
DN and no password is an *unauthenticated* bind that many servers accept.

LDAP matches ``uid`` case-insensitively, so ``Carol`` finds carol's entry: the search
asks for the user attribute and the account is named by the entry's own value, never
by what was typed (else ``Carol`` would be a second account with its own folder).

Only a failure to talk to LDAP (no connection, a dropped one, no answer in time, or
the server saying it is busy or unavailable) lets the login cache decide. Any other
answer is LDAP's word: ``unwillingToPerform`` for a disabled account, an ACL refusal,
a missing search base all refuse the login, so a cached password of an account LDAP
now refuses does not work. A refused *search* bind (the service account's password)
says nothing about the user and also lets the cache decide; it is logged as an error.

A course may name its students as an LDAP group (``course.students_ldap_group``):
:meth:`LdapAuthenticator.in_group` asks whether an account is a member, by the group
entry's ``member`` or ``uniqueMember`` (the user's DN: groupOfNames, groupOfUniqueNames)
or ``memberUid`` (the user's name: posixGroup). Answers are kept for
:data:`GROUP_TTL` seconds, since every course page asks; while LDAP cannot answer,
the last answer this process got stands (none: not a member).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import ldap3
from ldap3.core.exceptions import (
    LDAPBindError,
    LDAPBusyResult,
    LDAPCommunicationError,
    LDAPException,
    LDAPInvalidCredentialsResult,
    LDAPNoSuchObjectResult,
    LDAPResponseTimeoutError,
    LDAPUnavailableResult,
)
from ldap3.utils.conv import escape_filter_chars

from vmchecker.errors import LdapUnavailable
from vmchecker.storer.web.logincache import LoginCache

log = logging.getLogger(__name__)


# Errors that mean LDAP could not give an answer (the cache decides); any other
# LDAPException is an answer, and a refusal.
UNREACHABLE = (LDAPCommunicationError, LDAPResponseTimeoutError, LDAPBusyResult, LDAPUnavailableResult)
GROUP_TTL = 60.0   # seconds a group membership answer is reused


@dataclass(frozen=True)
class LdapUser:
    dn: str
    name: str           # the entry's own value of the user attribute (its spelling)


@dataclass(frozen=True)
class LdapSettings:
    url: str                                # ldap://host:389 or ldaps://host:636
    base: str                               # where users are searched
    user_attr: str = "uid"
    bind_dn: str = ""                       # empty: search anonymously
    bind_password: str = ""
    user_filter: str = "(objectClass=*)"    # extra condition, ANDed with the name
    timeout: float = 5.0
    cache_file: Path | None = None          # None: no cache
    cache_ttl: float = 7 * 86400.0


class LdapAuthenticator:
    def __init__(self, settings: LdapSettings):
        self.settings = settings
        self.cache = LoginCache(settings.cache_file, settings.cache_ttl) if settings.cache_file else None
        self._groups: dict[tuple[str, str], tuple[bool, float]] = {}   # (group, account) -> (member, when)
        self._groups_lock = threading.Lock()
        self.clock = time.monotonic

    def _server(self) -> ldap3.Server:
        return ldap3.Server(self.settings.url, connect_timeout=self.settings.timeout, get_info=ldap3.NONE)

    def _connection(self, user: str | None, password: str | None) -> ldap3.Connection:
        # receive_timeout: ldap3 packs it into SO_RCVTIMEO as an integer
        return ldap3.Connection(self._server(), user=user, password=password,
                                receive_timeout=math.ceil(self.settings.timeout), raise_exceptions=True)

    def find_user(self, name: str) -> LdapUser | None:
        """The single entry whose user attribute is ``name`` (as LDAP compares it), or None."""
        s = self.settings
        query = f"(&{s.user_filter}({s.user_attr}={escape_filter_chars(name)}))"
        conn = self._connection(s.bind_dn or None, s.bind_password or None)
        try:
            try:
                conn.bind()
            except (LDAPBindError, LDAPInvalidCredentialsResult) as exc:
                log.error("LDAP: the search bind as %r was refused: %s", s.bind_dn or "anonymous", exc)
                raise LdapUnavailable(f"{s.url}: search bind refused") from exc
            conn.search(s.base, query, search_scope=ldap3.SUBTREE, attributes=[s.user_attr], size_limit=2)
            entries = list(conn.entries)
        finally:
            conn.unbind()
        if len(entries) != 1:
            if entries:
                log.warning("LDAP: %d entries match %s; refusing", len(entries), query)
            return None
        entry = entries[0]
        values = [str(v) for attr, vs in entry.entry_attributes_as_dict.items()
                  if attr.casefold() == s.user_attr.casefold() for v in vs]
        spelled = [v for v in values if v.casefold() == name.casefold()]
        if not spelled:
            log.warning("LDAP: %s matched %s but its %s is %r; refusing", entry.entry_dn, query, s.user_attr, values)
            return None
        return LdapUser(entry.entry_dn, spelled[0])

    def in_group(self, group_dn: str, account: str) -> bool:
        """Is ``account`` a member of the group entry ``group_dn``? Refusals and errors
        are "no"; while LDAP cannot be reached, the last answer (if any) stands."""
        key = (group_dn.casefold(), account)
        with self._groups_lock:
            known = self._groups.get(key)
        if known is not None and self.clock() - known[1] < GROUP_TTL:
            return known[0]
        try:
            member = self._member(group_dn, account)
        except (LdapUnavailable, *UNREACHABLE) as exc:
            log.warning("LDAP unavailable (%s): is %s in %s? %s", exc, account, group_dn,
                        "the last answer stands" if known else "no answer yet: not a member")
            return known[0] if known else False
        except LDAPException as exc:
            log.warning("LDAP: looking %s up in the group %s failed: %s", account, group_dn, exc)
            member = False
        with self._groups_lock:
            self._groups[key] = (member, self.clock())
        return member

    def _member(self, group_dn: str, account: str) -> bool:
        user = self.find_user(account)
        if user is None or user.name != account:     # LDAP's own spelling is the account
            return False
        dn, uid = escape_filter_chars(user.dn), escape_filter_chars(user.name)
        query = f"(|(member={dn})(uniqueMember={dn})(memberUid={uid}))"
        s = self.settings
        conn = self._connection(s.bind_dn or None, s.bind_password or None)
        try:
            conn.bind()
            try:
                conn.search(group_dn, query, search_scope=ldap3.BASE, attributes=[], size_limit=1)
            except LDAPNoSuchObjectResult:
                log.error("LDAP: the students' group %s does not exist (course.students_ldap_group)", group_dn)
                return False
            return bool(conn.entries)
        finally:
            conn.unbind()

    def check(self, name: str, password: str) -> str | None:
        """The account's name (as LDAP spells it) when LDAP accepts ``password``, None
        when it refuses; raise LdapUnavailable when it cannot answer."""
        try:
            user = self.find_user(name)
            if user is None:
                return None
            conn = self._connection(user.dn, password)
            try:
                conn.bind()
            except (LDAPBindError, LDAPInvalidCredentialsResult):
                return None
            finally:
                conn.unbind()
            return user.name
        except UNREACHABLE as exc:
            raise LdapUnavailable(f"{self.settings.url}: {exc}") from exc
        except LDAPException as exc:
            log.warning("LDAP refused the login of %s: %s", name, exc)
            return None

    def authenticate(self, name: str, password: str) -> str | None:
        """The account's name when LDAP accepts the login, or, while LDAP cannot be
        reached, when the login cache does; None otherwise."""
        if not password:
            return None
        try:
            found = self.check(name, password)
        except LdapUnavailable as exc:
            log.warning("LDAP unavailable (%s); using the login cache for %s", exc, name)
            return self.cache.verify(name, password) if self.cache else None
        if found is not None and self.cache:
            self.cache.remember(found, password)
        return found
