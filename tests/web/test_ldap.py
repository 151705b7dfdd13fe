"""LDAP logins against a real slapd started by the test, and the cache that keeps
students logging in while LDAP is down."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.web import slapd
from tests.web.conftest import login
from vmchecker.storer.web import create_app
from vmchecker.storer.web.ldapauth import LdapAuthenticator, LdapSettings
from vmchecker.storer.web.throttle import Limits

USERS = {"carol": "carol-pw", "dave": "dave-pw"}

reason = slapd.available()
pytestmark = pytest.mark.skipif(reason is not None, reason=reason or "")


@pytest.fixture(scope="module")
def server() -> Iterator[slapd.Slapd]:
    s = slapd.Slapd(USERS)
    s.start()
    yield s
    s.close()


def settings(server: slapd.Slapd, tmp_path: Path, **kw) -> LdapSettings:
    return LdapSettings(url=server.url, base=slapd.PEOPLE, cache_file=tmp_path / "ldap-cache.json",
                        timeout=3.0, **kw)


def test_anonymous_search_then_user_bind(server: slapd.Slapd, tmp_path: Path) -> None:
    ldap = LdapAuthenticator(settings(server, tmp_path))
    assert ldap.find_dn("carol") == f"uid=carol,{slapd.PEOPLE}"
    assert ldap.authenticate("carol", "carol-pw")
    assert not ldap.authenticate("carol", "dave-pw")
    assert not ldap.authenticate("carol", "")          # an unauthenticated bind is not a login
    assert not ldap.authenticate("nobody", "carol-pw")


def test_service_account_search(server: slapd.Slapd, tmp_path: Path) -> None:
    ldap = LdapAuthenticator(settings(server, tmp_path, bind_dn=slapd.READER_DN,
                                      bind_password=slapd.READER_PASSWORD))
    assert ldap.authenticate("dave", "dave-pw")
    assert not ldap.authenticate("dave", "wrong")


def test_filter_is_escaped(server: slapd.Slapd, tmp_path: Path) -> None:
    """``*`` and ``)(`` in a name are matched literally: unescaped, ``c*`` would find carol."""
    ldap = LdapAuthenticator(settings(server, tmp_path))
    assert ldap.find_dn("c*") is None
    assert ldap.find_dn("x)(uid=carol") is None
    assert not ldap.authenticate("c*", "carol-pw")


def test_wrong_service_password_is_not_a_wrong_user_password(server: slapd.Slapd, tmp_path: Path) -> None:
    """A refused search bind means LDAP cannot answer: the cache decides, not a refusal."""
    good = LdapAuthenticator(settings(server, tmp_path))
    assert good.authenticate("carol", "carol-pw")       # now cached
    broken = LdapAuthenticator(settings(server, tmp_path, bind_dn=slapd.READER_DN, bind_password="nope"))
    assert broken.authenticate("carol", "carol-pw")
    assert not broken.authenticate("dave", "dave-pw")   # never cached


def test_login_through_the_app_then_from_the_cache_while_slapd_is_down(tmp_path: Path, web_course) -> None:
    own = slapd.Slapd(USERS)     # this test stops its server, so it has its own
    own.start()
    try:
        cache = tmp_path / "ldap-cache.json"
        app = create_app(tmp_path / "global.yaml", None, LdapSettings(own.url, slapd.PEOPLE, cache_file=cache,
                                                                      timeout=3.0),
                         secret_key="k" * 32, throttle_limits=Limits(per_account=50, per_address=50))
        assert login(app.test_client(), "carol", "wrong").status_code == 401
        assert not cache.exists()
        c = app.test_client()
        assert login(c, "carol", "carol-pw").status_code == 302
        assert c.get("/courses").status_code == 200
        stored = json.loads(cache.read_text())
        assert set(stored) == {"carol"} and "carol-pw" not in cache.read_text()
        assert stored["carol"]["hash"].startswith("$argon2")
        assert cache.stat().st_mode & 0o777 == 0o600

        own.stop()
        c = app.test_client()
        assert login(c, "carol", "carol-pw").status_code == 302, "cached login refused while slapd is down"
        assert "carol" in c.get("/courses").get_data(as_text=True)
        assert login(app.test_client(), "carol", "wrong").status_code == 401
        assert login(app.test_client(), "dave", "dave-pw").status_code == 401  # never logged in: not cached
    finally:
        own.close()


def test_cached_login_expires(server: slapd.Slapd, tmp_path: Path) -> None:
    ldap = LdapAuthenticator(LdapSettings(server.url, slapd.PEOPLE, cache_file=tmp_path / "c.json", cache_ttl=60))
    assert ldap.authenticate("carol", "carol-pw")
    assert ldap.cache.verify("carol", "carol-pw")
    ldap.cache._clock = lambda: 10**12     # far in the future
    assert not ldap.cache.verify("carol", "carol-pw")
    down = LdapAuthenticator(LdapSettings("ldap://127.0.0.1:1", slapd.PEOPLE, cache_file=tmp_path / "c.json",
                                          cache_ttl=60, timeout=2.0))
    assert down.authenticate("carol", "carol-pw")         # unexpired, LDAP unreachable
    down.cache._clock = lambda: 10**12
    assert not down.authenticate("carol", "carol-pw")
