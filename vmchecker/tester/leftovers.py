"""What a killed queue manager may have left, and who removes it: the machines whose
guests a backend must look for, and each backend's ``cleanup_leftovers``."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable, Sequence

from vmchecker import bundle, config
from vmchecker.config import Machine
from vmchecker.contract import SUBMISSION_CONFIG
from vmchecker.errors import VmcheckerError
from vmchecker.tester_config import TesterConfig

log = logging.getLogger(__name__)


def known_machines(cfg: TesterConfig) -> list[Machine]:
    """The machines (tester overrides applied) of the jobs a killed run left in
    ``work/``, and those the tester config defines whole enough to locate a guest's
    files (a type and a base image): where a backend looks for leftovers."""
    machines = []
    for sub_config in cfg.work_dir.glob(f"*/{SUBMISSION_CONFIG}"):
        try:
            machines.append(cfg.machine(bundle.read_bundle_dir(sub_config.parent).machine))
        except (VmcheckerError, OSError) as exc:
            log.warning("%s: cannot tell its machine, its guest is not looked for: %s",
                        sub_config.parent, getattr(exc, "message", exc))
    for name, body in cfg.machines.items():
        if body.get("type") in config.MACHINE_TYPES and isinstance(body.get("base_image"), str):
            machines.append(Machine(name=name, type=body["type"], vm=str(body.get("vm", "")),
                                    base_image=body["base_image"]))
    return machines


def machine_types(cfg: TesterConfig, machines: Iterable[Machine] = ()) -> set[str]:
    """Machine types named in the tester config, and of ``machines``."""
    types = {str(body["type"]) for body in cfg.machines.values() if body.get("type")}
    return types | {m.type for m in machines}


def cleanup_backend(machine_type: str, machines: Sequence[Machine] = ()) -> None:
    """Ask an executor backend to remove guests a killed job left (LXC clones...);
    ``machines`` of that type tell it where else to look (e.g. KVM state folders)."""
    try:
        executor = importlib.import_module("vmchecker.executor")
        get_host = getattr(executor, "get_host", None)
        if get_host is None:
            log.warning("vmchecker.executor has no get_host(); cannot clean %s leftovers", machine_type)
            return
        host = get_host(machine_type)
        cleanup = getattr(host, "cleanup_leftovers", None)
        if cleanup is None:
            log.warning("the %s backend has no cleanup_leftovers(); skipping", machine_type)
            return
        removed = cleanup(machines)
        log.info("cleaned %s leftovers: %s", machine_type, ", ".join(removed or []) or "none")
    except Exception:  # a broken backend must not stop the tester from serving others
        log.exception("cleaning %s leftovers failed", machine_type)
