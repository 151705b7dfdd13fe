"""LDAP logins through ldap3: find the user's entry, then bind as that entry.

The search binds as a service account (``bind_dn`` + password) or anonymously, with
the user name escaped into the filter, so ``*`` or ``)(`` in a name match nothing.
An empty password is refused before anything is sent: an LDAP "simple bind" with a
DN and no password is an *unauthenticated* bind that many servers accept.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import ldap3
from ldap3.core.exceptions import LDAPBindError, LDAPException, LDAPInvalidCredentialsResult
from ldap3.utils.conv import escape_filter_chars

from vmchecker.storer.web.logincache import LoginCache

log = logging.getLogger(__name__)


class LdapUnavailable(Exception):
    """LDAP could not be reached or did not answer: the cache may decide."""


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

    def _server(self) -> ldap3.Server:
        return ldap3.Server(self.settings.url, connect_timeout=self.settings.timeout, get_info=ldap3.NONE)

    def _connection(self, user: str | None, password: str | None) -> ldap3.Connection:
        # receive_timeout: ldap3 packs it into SO_RCVTIMEO as an integer
        return ldap3.Connection(self._server(), user=user, password=password,
                                receive_timeout=math.ceil(self.settings.timeout), raise_exceptions=True)

    def find_dn(self, name: str) -> str | None:
        """The DN of the single entry whose user attribute is ``name``, or None."""
        s = self.settings
        query = f"(&{s.user_filter}({s.user_attr}={escape_filter_chars(name)}))"
        conn = self._connection(s.bind_dn or None, s.bind_password or None)
        try:
            try:
                conn.bind()
            except (LDAPBindError, LDAPInvalidCredentialsResult) as exc:
                log.error("LDAP: the search bind as %r was refused: %s", s.bind_dn or "anonymous", exc)
                raise LdapUnavailable(f"{s.url}: search bind refused") from exc
            conn.search(s.base, query, search_scope=ldap3.SUBTREE, attributes=[], size_limit=2)
            entries = list(conn.entries)
        finally:
            conn.unbind()
        if len(entries) != 1:
            if entries:
                log.warning("LDAP: %d entries match %s; refusing", len(entries), query)
            return None
        return entries[0].entry_dn

    def check(self, name: str, password: str) -> bool:
        """Ask LDAP; raise LdapUnavailable when it cannot answer."""
        try:
            dn = self.find_dn(name)
            if dn is None:
                return False
            conn = self._connection(dn, password)
            try:
                conn.bind()
            except (LDAPBindError, LDAPInvalidCredentialsResult):
                return False
            finally:
                conn.unbind()
            return True
        except LDAPException as exc:
            raise LdapUnavailable(f"{self.settings.url}: {exc}") from exc

    def authenticate(self, name: str, password: str) -> bool:
        """LDAP's answer when it gives one; the login cache's when LDAP is down."""
        if not password:
            return False
        try:
            ok = self.check(name, password)
        except LdapUnavailable as exc:
            log.warning("LDAP unavailable (%s); using the login cache for %s", exc, name)
            return bool(self.cache and self.cache.verify(name, password))
        if ok and self.cache:
            self.cache.remember(name, password)
        return ok
