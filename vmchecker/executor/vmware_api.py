"""The thin wrapper between the VMware backend and vSphere (pyvmomi): a logged-in session
per server and account, every fault turned into an ExecutorError that names the VM and
the call, tasks awaited with a bound, VMs and snapshots found, and files moved to and from
a guest over the HTTP URLs the guest operations hand out, capped while reading.

The password is read on the tester from the machine's ``vmware_credentials`` file (never
from a config), which must be the tester's own: a file others may read is refused. Its
first line is the vSphere account's password, its second (optional) the guest user's.
"""

from __future__ import annotations

import http.client
import logging
import os
import ssl
import stat
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pyVim.connect import SmartConnect
from pyVmomi import vim, vmodl

from vmchecker.errors import ExecutorError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 60        # seconds for one HTTP request to vSphere
TASK_TIMEOUT = 900          # seconds a task (revert, clone, power, destroy) may take
CHUNK = 65536
T = TypeVar("T")


@dataclass(frozen=True)
class Credentials:
    password: str
    guest_password: str


def read_credentials(path: str, url: str) -> Credentials:
    """The passwords in the credentials file ``path``; refused when it is missing, not
    the tester's (root's or this process's user's), or open to its group or others."""
    if not path:
        raise ExecutorError(f"no vmware_credentials for {url}: name a file on the tester (chmod 600) whose first"
                            " line is the password, in the machine's vmware_credentials")
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise ExecutorError(f"the VMware credentials file {path} is not a regular file")
        if info.st_uid not in (0, os.geteuid()) or info.st_mode & 0o077:
            raise ExecutorError(f"the VMware credentials file {path} is open to others (owner uid {info.st_uid},"
                                f" mode {stat.S_IMODE(info.st_mode):04o}): it holds a password; chown root and"
                                f" chmod 600 {path}")
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ExecutorError(f"the VMware credentials file {path} (vmware_credentials, for {url}) does not exist"
                            " on this tester") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ExecutorError(f"cannot read the VMware credentials file {path}: {exc}") from None
    return Credentials(lines[0] if lines else "", lines[1] if len(lines) > 1 else "")


def fault_text(exc: BaseException) -> str:
    """A vSphere fault in one line: its kind and its message."""
    kind = type(exc).__name__.rsplit(".", 1)[-1]
    msg = getattr(exc, "msg", None) or ""
    if not msg:
        msg = "; ".join(m.message for m in getattr(exc, "faultMessage", None) or [] if getattr(m, "message", ""))
    return f"{kind}: {msg}" if msg else kind


class Session:
    """One logged-in connection to a vCenter or ESXi, shared by the jobs of this process
    (pyvmomi's stub is thread-safe); when the server drops the session, the next call
    logs in again on the same stub, so the objects already found stay usable."""

    def __init__(self, url: str, user: str, credentials: str):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ExecutorError(f"vmware_url {url!r} is not an http(s) URL such as https://vcenter.example.org/sdk")
        self.url, self.user, self.credentials = url, user, credentials
        self.scheme, self.netloc = parts.scheme, parts.netloc
        self._parts = parts
        self._lock = threading.Lock()
        self._si: Any = None
        self._guest_password = ""
        self.ssl = ssl.create_default_context() if parts.scheme == "https" else None

    # -- connecting

    @property
    def content(self) -> Any:
        return self.connect().content

    @property
    def guest_password(self) -> str:
        self.connect()
        return self._guest_password

    def connect(self) -> Any:
        """The logged-in ServiceInstance (logging in now if this session is not)."""
        with self._lock:
            if self._si is None:
                secret = read_credentials(self.credentials, self.url)
                port = self._parts.port or (443 if self.scheme == "https" else 80)
                try:
                    self._si = SmartConnect(protocol=self.scheme, host=self._parts.hostname, port=port,
                                            path=self._parts.path or "/sdk", user=self.user, pwd=secret.password,
                                            sslContext=self.ssl, httpConnectionTimeout=CONNECT_TIMEOUT)
                except vim.fault.InvalidLogin:
                    raise ExecutorError(f"VMware at {self.url} refused the login of {self.user!r}: is the password"
                                        f" in {self.credentials} right?") from None
                except vmodl.MethodFault as exc:
                    raise ExecutorError(f"cannot log in to VMware at {self.url}: {fault_text(exc)}") from None
                except (OSError, http.client.HTTPException, ValueError) as exc:
                    raise ExecutorError(f"cannot connect to VMware at {self.url}: {exc or type(exc).__name__}") from None
                self._guest_password = secret.guest_password
                log.info("connected to VMware at %s as %s", self.url, self.user)
            return self._si

    def _login_again(self, stale: Any) -> None:
        """Log in again on the same stub (the server dropped our session), unless
        another thread already did."""
        with self._lock:
            if self._si is not stale:
                return
            secret = read_credentials(self.credentials, self.url)
            try:
                stale.content.sessionManager.Login(userName=self.user, password=secret.password)
            except vim.fault.InvalidLogin:
                self._si = None
                raise ExecutorError(f"VMware at {self.url} refused the login of {self.user!r} (logging in again):"
                                    f" is the password in {self.credentials} right?") from None
            except (vmodl.MethodFault, OSError, http.client.HTTPException) as exc:
                self._si = None
                raise ExecutorError(f"logging in again to VMware at {self.url} failed: {exc}") from None
            log.info("logged in again to VMware at %s as %s", self.url, self.user)

    def close(self) -> None:
        with self._lock:
            si, self._si = self._si, None
        if si is not None:
            try:
                si.content.sessionManager.Logout()
            except (vmodl.MethodFault, OSError, http.client.HTTPException) as exc:
                log.debug("logging out of %s: %s", self.url, exc)

    # -- calls

    def call(self, what: str, vm: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``, a vSphere call (or a property read) about ``vm``; any
        fault or lost connection becomes an ExecutorError naming both."""
        for attempt in (1, 2):
            si = self.connect()
            try:
                return fn(*args, **kwargs)
            except vim.fault.NotAuthenticated:
                if attempt == 2:
                    raise ExecutorError(f"{what} on VMware VM {vm!r} failed: {self.url} keeps refusing our"
                                        " session") from None
                self._login_again(si)
            except vmodl.MethodFault as exc:
                raise ExecutorError(f"{what} on VMware VM {vm!r} failed: {fault_text(exc)}") from None
            except (OSError, http.client.HTTPException) as exc:
                raise ExecutorError(f"{what} on VMware VM {vm!r} failed: cannot reach {self.url}: {exc}") from None
        raise AssertionError("unreachable")

    def wait(self, what: str, vm: str, start: Callable[[], Any], timeout: float = TASK_TIMEOUT) -> Any:
        """Start a task (``start()``) and wait for its end; its result. A task that
        fails, or outlives ``timeout``, is an ExecutorError naming the VM and the call."""
        task = self.call(what, vm, start)
        deadline = time.monotonic() + timeout
        pause = 0.02
        while True:
            info = self.call(what, vm, lambda: task.info)
            if info.state == vim.TaskInfo.State.success:
                return info.result
            if info.state == vim.TaskInfo.State.error:
                reason = fault_text(info.error) if info.error is not None else "the task failed"
                raise ExecutorError(f"{what} on VMware VM {vm!r} failed: {reason}")
            if time.monotonic() > deadline:
                raise ExecutorError(f"{what} on VMware VM {vm!r} did not finish within {timeout:g} s")
            time.sleep(pause)
            pause = min(pause * 2, 0.5)

    # -- the inventory

    def find_vm(self, name: str) -> Any:
        """The VM ``name``: an inventory path (``Datacenter/vm/folder/name``) when it
        has a slash, else the one VM of that name."""
        content = self.content
        if "/" in name:
            vm = self.call("FindByInventoryPath", name, content.searchIndex.FindByInventoryPath, name)
            if not isinstance(vm, vim.VirtualMachine):
                raise ExecutorError(f"VMware at {self.url} has no VM at inventory path {name!r}")
            return vm
        found = [obj for obj, value in self.vm_names(name) if value == name]
        if not found:
            raise ExecutorError(f"VMware at {self.url} has no VM named {name!r}")
        if len(found) > 1:
            raise ExecutorError(f"VMware at {self.url} has {len(found)} VMs named {name!r}: give its inventory"
                                " path (Datacenter/vm/folder/name) instead")
        return found[0]

    def vm_names(self, what: str = "the VMs") -> list[tuple[Any, str]]:
        """(VM, name) of every VM of the inventory, in one round trip."""
        content = self.content
        pc = vmodl.query.PropertyCollector
        view = self.call("CreateContainerView", what, content.viewManager.CreateContainerView,
                         content.rootFolder, [vim.VirtualMachine], True)
        try:
            spec = pc.FilterSpec(
                objectSet=[pc.ObjectSpec(obj=view, skip=True, selectSet=[
                    pc.TraversalSpec(name="view", path="view", skip=False, type=vim.view.ContainerView)])],
                propSet=[pc.PropertySpec(type=vim.VirtualMachine, pathSet=["name"])])
            found = self.call("RetrieveContents", what, content.propertyCollector.RetrieveContents, [spec])
        finally:
            self.call("DestroyView", what, view.Destroy)
        return [(o.obj, o.propSet[0].val) for o in found if o.propSet]

    def properties(self, vms: list[Any], paths: list[str], what: str) -> list[dict[str, Any]]:
        """The properties ``paths`` of each VM of ``vms``, in one round trip, as
        {path: value} in the order of ``vms`` (a property that is unset is left out)."""
        pc = vmodl.query.PropertyCollector
        spec = pc.FilterSpec(objectSet=[pc.ObjectSpec(obj=vm, skip=False) for vm in vms],
                             propSet=[pc.PropertySpec(type=vim.VirtualMachine, pathSet=paths)])
        found = self.call("RetrieveContents", what, self.content.propertyCollector.RetrieveContents, [spec])
        by_id = {o.obj._moId: {p.name: p.val for p in o.propSet or []} for o in found}
        return [by_id.get(vm._moId, {}) for vm in vms]

    # -- files in a guest, over HTTP

    def transfer_url(self, url: str) -> urllib.parse.SplitResult:
        """The URL a file transfer call returned, aimed at the server we connected to
        when its host is ``*`` (ESXi's way of saying "me")."""
        parts = urllib.parse.urlsplit(url)
        if parts.hostname in ("*", None):
            parts = parts._replace(scheme=self.scheme, netloc=self.netloc)
        return parts

    def _http(self, parts: urllib.parse.SplitResult, timeout: float) -> http.client.HTTPConnection:
        if parts.scheme == "https":
            return http.client.HTTPSConnection(parts.netloc, timeout=timeout, context=self.ssl or ssl.create_default_context())
        return http.client.HTTPConnection(parts.netloc, timeout=timeout)

    def put(self, url: str, data: bytes, what: str, vm: str, timeout: float) -> None:
        """PUT ``data`` to a guest file URL (with its length, which ESXi needs)."""
        parts = self.transfer_url(url)
        conn = self._http(parts, timeout)
        try:
            conn.request("PUT", parts._replace(scheme="", netloc="").geturl(), body=data,
                         headers={"Content-Length": str(len(data)), "Content-Type": "application/octet-stream"})
            resp = conn.getresponse()
            body = resp.read(4096)
            if resp.status // 100 != 2:
                raise ExecutorError(f"{what} to VMware VM {vm!r} failed: HTTP {resp.status} {resp.reason}:"
                                    f" {body.decode('utf-8', 'replace').strip()[:300]}")
        except (OSError, http.client.HTTPException) as exc:
            raise ExecutorError(f"{what} to VMware VM {vm!r} failed: {exc}") from None
        finally:
            conn.close()

    def get(self, url: str, limit: int, what: str, vm: str, timeout: float) -> bytes:
        """The first ``limit`` bytes of a guest file URL, read as they come: a flood is
        cut while reading, never read whole."""
        parts = self.transfer_url(url)
        conn = self._http(parts, timeout)
        try:
            conn.request("GET", parts._replace(scheme="", netloc="").geturl())
            resp = conn.getresponse()
            if resp.status // 100 != 2:
                raise ExecutorError(f"{what} from VMware VM {vm!r} failed: HTTP {resp.status} {resp.reason}")
            data = bytearray()
            while len(data) < limit:
                chunk = resp.read(min(CHUNK, limit - len(data)))
                if not chunk:
                    break
                data += chunk
            return bytes(data)
        except (OSError, http.client.HTTPException) as exc:
            raise ExecutorError(f"{what} from VMware VM {vm!r} failed: {exc}") from None
        finally:
            conn.close()
