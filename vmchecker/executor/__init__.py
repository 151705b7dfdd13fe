"""Executor backends, looked up by the machine's ``type``.

Backend modules are imported only when a machine of their type is used, so a tester
without libvirt or pyvmomi still runs LXC jobs. Each backend module defines
``create_host() -> vmchecker.executor.base.Host``.
"""

from __future__ import annotations

import importlib
import logging
import threading

from vmchecker.errors import BundleError, ExecutorError
from vmchecker.executor.base import Host

log = logging.getLogger(__name__)

BACKENDS = {
    "lxc": "vmchecker.executor.lxc",
    "kvm": "vmchecker.executor.kvm",
    "vmware": "vmchecker.executor.vmware",
    "docker": "vmchecker.executor.docker",
}

_hosts: dict[str, Host] = {}
_lock = threading.Lock()


def get_host(machine_type: str) -> Host:
    """The (shared) Host of backend ``machine_type``.

    Raises BundleError for a type no backend serves, ExecutorError when the backend
    cannot run here (its library is missing)."""
    module_name = BACKENDS.get(machine_type)
    if module_name is None:
        raise BundleError(f"unknown machine type {machine_type!r} (known: {', '.join(BACKENDS)})")
    with _lock:
        if machine_type not in _hosts:
            try:
                module = importlib.import_module(module_name)
            except ImportError as exc:
                raise ExecutorError(f"the {machine_type} backend is not available on this tester: {exc}") from None
            _hosts[machine_type] = module.create_host()
        return _hosts[machine_type]
