"""LDAP logins against a real slapd started by the test, and the cache that keeps
students logging in while LDAP is down (and only then)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from tests.util import zip_bytes
from tests.web import slapd
from tests.web.conftest import login
from tests.web.helpers import HELLO
from vmchecker import config
from vmchecker.repo import Repository
from vmchecker.storer.web import create_app
from vmchecker.storer.web.ldapauth import LdapAuthenticator, LdapSettings, LdapUser
from vmchecker.storer.web.throttle import Limits

USERS = {"carol": "carol-pw", "dave": "dave-pw", "Erin": "erin-pw"}   # Erin: uid spelled with a capital

reason = slapd.available()
pytestmark = pytest.mark.skipif(reason is not None, reason=reason or "")


@pytest.fixture(scope="module")
def server() -> Iterator[slapd.Slapd]:
    with slapd.Slapd(USERS) as s:
        s.start()
        yield s


def settings(server: slapd.Slapd, tmp_path: Path, **kw) -> LdapSettings:
    return LdapSettings(url=server.url, base=slapd.PEOPLE, cache_file=tmp_path / "ldap-cache.json",
                        timeout=3.0, **kw)


def test_anonymous_search_then_user_bind(server: slapd.Slapd, tmp_path: Path) -> None:
    ldap = LdapAuthenticator(settings(server, tmp_path))
    assert ldap.find_user("carol") == LdapUser(f"uid=carol,{slapd.PEOPLE}", "carol")
    assert ldap.authenticate("carol", "carol-pw") == "carol"
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
    assert ldap.find_user("c*") is None
    assert ldap.find_user("x)(uid=carol") is None
    assert not ldap.authenticate("c*", "carol-pw")


def test_wrong_service_password_is_not_a_wrong_user_password(server: slapd.Slapd, tmp_path: Path) -> None:
    """A refused search bind means LDAP cannot answer: the cache decides, not a refusal."""
    good = LdapAuthenticator(settings(server, tmp_path))
    assert good.authenticate("carol", "carol-pw")       # now cached
    broken = LdapAuthenticator(settings(server, tmp_path, bind_dn=slapd.READER_DN, bind_password="nope"))
    assert broken.authenticate("carol", "carol-pw")
    assert not broken.authenticate("dave", "dave-pw")   # never cached


def test_login_through_the_app_then_from_the_cache_while_slapd_is_down(tmp_path: Path, web_course) -> None:
    with slapd.Slapd(USERS) as own:     # this test stops its server, so it has its own
        own.start()
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
        c = app.test_client()
        assert login(c, "CAROL", "carol-pw").status_code == 302         # from the cache, in any case...
        assert c.get("/api/session").get_json()["user"] == "carol"     # ...it is the same account


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


def _session_user(client: FlaskClient) -> str | None:
    return client.get("/api/session").get_json()["user"]


def test_the_entrys_own_spelling_names_the_account(server: slapd.Slapd, tmp_path: Path,
                                                  web_course: config.CourseConfig) -> None:
    """``Carol`` is carol: one session name, one repository folder, one cache entry,
    one throttle count; and ``erin`` is the entry's ``Erin``."""
    cache = tmp_path / "ldap-cache.json"
    app = create_app(tmp_path / "global.yaml", None, settings(server, tmp_path), secret_key="k" * 32,
                     throttle_limits=Limits(per_account=3, per_address=50))
    ldap = LdapAuthenticator(settings(server, tmp_path))
    assert ldap.find_user("CaRoL") == LdapUser(f"uid=carol,{slapd.PEOPLE}", "carol")
    assert ldap.find_user("erin") == LdapUser(f"uid=Erin,{slapd.PEOPLE}", "Erin")

    c = app.test_client()
    assert login(c, "Carol", "carol-pw").status_code == 302
    assert _session_user(c) == "carol"
    token = c.get("/api/session").get_json()["csrf_token"]
    r = c.post("/api/courses/so/assignments/1-hello/upload", headers={"X-CSRF-Token": token},
               data={"archive": (io.BytesIO(zip_bytes(HELLO)), "hello.zip")}, content_type="multipart/form-data")
    assert r.status_code == 201
    assert Repository(web_course).accounts("1-hello") == ["carol"]
    assert set(json.loads(cache.read_text())) == {"carol"}

    e = app.test_client()
    assert login(e, "erin", "erin-pw").status_code == 302
    assert _session_user(e) == "Erin"
    assert set(json.loads(cache.read_text())) == {"carol", "erin"}          # keyed without case...
    assert json.loads(cache.read_text())["erin"]["name"] == "Erin"         # ...spelled as LDAP does

    for name in ("CAROL", "carol", "Carol"):                                # 3 failures for one account
        assert login(app.test_client(), name, "wrong").status_code == 401
    assert login(app.test_client(), "carol", "carol-pw").status_code == 429


def test_a_definite_refusal_is_not_overruled_by_the_cache(server: slapd.Slapd, tmp_path: Path) -> None:
    """slapd answering ``unwillingToPerform`` (here: ``disallow bind_simple``, as a server
    refusing a disabled account would) is LDAP's answer: a cached password must not win."""
    assert LdapAuthenticator(settings(server, tmp_path)).authenticate("carol", "carol-pw") == "carol"  # cached
    with slapd.Slapd(USERS, extra_conf="disallow bind_simple") as refusing:
        refusing.start()
        ldap = LdapAuthenticator(settings(refusing, tmp_path))
        assert ldap.find_user("carol") is not None                       # it answers searches...
        assert ldap.authenticate("carol", "carol-pw") is None            # ...and refuses the bind
    assert ldap.cache.verify("carol", "carol-pw") == "carol"             # the cache had it all along


def test_slapd_leaves_no_folder_when_loading_or_starting_fails(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(slapd.tempfile, "tempdir", str(tmp_path))     # where mkdtemp makes its folder
    monkeypatch.setattr(slapd, "SLAPADD", "/bin/false")
    with pytest.raises(slapd.subprocess.CalledProcessError):
        slapd.Slapd(USERS)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    monkeypatch.setattr(slapd.tempfile, "tempdir", str(tmp_path))
    with pytest.raises(RuntimeError, match="slapd exited"):
        with slapd.Slapd(USERS) as broken, slapd.socket.socket() as taken:
            taken.bind(("127.0.0.1", broken.port))       # its port is taken (not listening): slapd exits
            broken.start()
    assert list(tmp_path.iterdir()) == []
