"""Every command in bin/ is installed by setup.py and explains itself with --help."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COMMANDS = sorted(p.name for p in (REPO / "bin").glob("vmchecker-*"))
CLI_MODULES = sorted(p.stem for p in (REPO / "vmchecker" / "cli").glob("*.py")
                     if p.stem not in ("__init__", "common"))


def test_every_command_module_has_a_wrapper():
    assert sorted(c.removeprefix("vmchecker-").replace("-", "_") for c in COMMANDS) == CLI_MODULES


@pytest.mark.parametrize("command", COMMANDS)
def test_installed_and_explains_itself(command):
    installed = Path(sys.executable).parent / command
    assert installed.exists(), f"{command} is not installed next to {sys.executable}: pip install -e ."
    done = subprocess.run([str(installed), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: {command}")
    assert len(done.stdout.splitlines()) > 3


@pytest.mark.parametrize("module", CLI_MODULES)
def test_config_flag_only_where_it_is_read(module, capsys):
    """``--config`` (the global config) is offered by exactly the commands that use it:
    a flag a command accepts and ignores would lie in its --help."""
    with pytest.raises(SystemExit) as exited:
        importlib.import_module(f"vmchecker.cli.{module}").main(["--help"])
    assert exited.value.code == 0
    offered = "--config" in capsys.readouterr().out
    source = (REPO / "vmchecker" / "cli" / f"{module}.py").read_text()
    assert offered == ("args.config" in source)


# What a command's start (``--help``, a mistyped command line) must not load: the
# configuration (PyYAML), the repository and archive formats, the daemon's XML-RPC client
# (http.client, email) and the journal. A grader's shell loop pays for every module each
# command imports before it can say anything; these are imported by the work functions.
# ``typing`` is needed by no module of the path at run time (annotations only).
HEAVY = ("yaml", "xmlrpc", "http", "email", "ssl", "tarfile", "zipfile", "gzip", "sqlite3", "json", "datetime",
         "typing",
         "dataclasses", "vmchecker.config", "vmchecker.confparse", "vmchecker.rpc", "vmchecker.repo",
         "vmchecker.submit", "vmchecker.archive", "vmchecker.queueing")
MODULES_MARK = "--- modules ---"


def loaded_by(code: str) -> set[str]:
    """The modules a fresh interpreter loads for ``code`` beyond what starting it loads."""
    def run(body: str) -> set[str]:
        probe = f"{body}\nimport sys\nprint({MODULES_MARK!r}, *sys.modules, sep='\\n')"
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=REPO)
        assert MODULES_MARK in done.stdout, done.stderr
        return set(done.stdout.split(MODULES_MARK, 1)[1].split())
    return run(code) - run("")


def heavy(modules: set[str]) -> set[str]:
    return {m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY)}


@pytest.mark.parametrize("argv", [["--help"], ["--no-such-option"]], ids=["help", "bad-command-line"])
@pytest.mark.parametrize("command", ["submit", "status"])
def test_a_start_loads_only_the_command_line_parser(command, argv):
    """``vmchecker-submit`` and ``vmchecker-status`` answer ``--help`` and a bad command
    line having loaded their own module, the shared CLI helpers and the errors: nothing of
    the configuration, the repository or the daemon's client."""
    loaded = loaded_by(f"from vmchecker.cli.{command} import main\n"
                       f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass")
    assert not heavy(loaded), f"vmchecker-{command} {' '.join(argv)} loads {sorted(heavy(loaded))}"
    assert {m for m in loaded if m.startswith("vmchecker")} == {
        "vmchecker", "vmchecker.cli", "vmchecker.cli.common", f"vmchecker.cli.{command}", "vmchecker.errors"}


def test_status_of_a_named_daemon_reads_no_config():
    """``vmchecker-status --url`` asks the daemon without reading a config: the client
    comes without PyYAML or the configuration schema (the wire format is not the files')."""
    loaded = loaded_by("from vmchecker.cli.status import main\n"
                       "assert main(['--url', 'http://127.0.0.1:9/']) == 8")
    assert "vmchecker.rpc" in loaded
    assert not {"yaml", "vmchecker.config", "vmchecker.confparse"} & loaded, sorted(loaded)


def test_the_work_loads_what_the_start_left_out(tmp_path):
    """The lazy imports are real imports: a stored submission goes through the same
    modules as before (``--no-queue``: no daemon needed)."""
    from tests.util import HELLO_C, make_zip, write_course

    write_course(tmp_path)
    archive = make_zip(tmp_path / "hello.zip", {"hello.c": HELLO_C})
    loaded = loaded_by("from vmchecker.cli.submit import main\n"
                       f"assert main(['--config', {str(tmp_path / 'global.yaml')!r}, '--skip-time-checks',"
                       f" '--no-queue', 'so', '1-hello', 'bob', {str(archive)!r}]) == 0")
    assert {"yaml", "vmchecker.config", "vmchecker.submit", "vmchecker.archive", "vmchecker.queueing"} <= loaded
    # the schema's annotations are read without typing (confparse._schema): the whole path goes without it
    assert "typing" not in loaded


# What a submission stored and queued over http:// never needs: the stdlib's XML-RPC
# client brings http.client, ssl and the email parser (vmchecker.rpc_http replaces it).
NOT_FOR_HTTP = ("xmlrpc.client", "http.client", "ssl", "email")


def test_a_submit_queued_over_http_loads_no_http_client(tmp_path):
    """A real ``vmchecker-submit`` against a daemon on loopback stores and queues the
    submission without the stdlib's XML-RPC client and what it imports."""
    import threading

    import yaml

    from tests.util import HELLO_C, free_port, make_zip, write_course
    from vmchecker.storer.daemon import StorerDaemon

    write_course(tmp_path, extra={"course": {"open_to_all_users": True, "students": []}})
    glob = tmp_path / "global.yaml"
    data = yaml.safe_load(glob.read_text())
    data["daemon"] = {"listen": f"127.0.0.1:{free_port()}", "state": str(tmp_path / "state")}
    glob.write_text(yaml.safe_dump(data))
    daemon = StorerDaemon(glob, state_dir=tmp_path / "state")
    threading.Thread(target=daemon.server.serve_forever, daemon=True).start()
    archive = make_zip(tmp_path / "hello.zip", {"hello.c": HELLO_C})
    try:
        loaded = loaded_by("from vmchecker.cli.submit import main\n"
                           f"assert main(['--config', {str(glob)!r}, '--skip-time-checks',"
                           f" 'so', '1-hello', 'bob', {str(archive)!r}]) == 0")
        assert sum(daemon.journal.counts().values()) == 1
    finally:
        daemon.server.shutdown()
        daemon.server.server_close()
        daemon.journal.close()
    assert "vmchecker.rpc_http" in loaded
    assert not {m for m in loaded if any(m == n or m.startswith(n + ".") for n in NOT_FOR_HTTP)}, sorted(loaded)
