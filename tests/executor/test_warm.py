"""Warm guests on real LXC clones, the real KVM snapshot domain and real Docker
containers (executor/warm.py):
a warm guest serves exactly one job and is never claimed again, a job on one is as
clean as on a cold guest, and a warm guest made before its base changed (or before
another job used the one KVM domain) is dropped and the job runs cold.

The warm guests are prepared in this process (named after it, so the autouse leftover
checks see them), as a queue manager's warm-up would; nothing asserts on time.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from pathlib import Path

import pytest

from tests.executor.docker_fixtures import DOCKER_IMAGE, docker_machine
from tests.executor.helpers import make_bundle, result_json, run_job, vmr
from tests.executor.kvm_fixtures import KVM_STATE, kvm_machine
from vmchecker.errors import ExecutorError
from vmchecker.executor.warm import WarmPool

# Run by both jobs of a pair: says whether the first one's writes (as root and as the
# student) reached the second's guest, then makes them.
LEAK_RUN = """\
if [ -e /etc/vmck-leak ] || [ -e /tmp/vmck-leak-student ]; then echo dirty; else echo clean; fi
echo leak > /etc/vmck-leak
vmchecker-run sh -c 'echo leak > /tmp/vmck-leak-student'
: > "$VMCHECKER_GRADE"
"""
TRUE_BUILD = "true\n"


def job(host, folder: Path, pool: WarmPool | None, **kwargs):
    bundle_dir, info = make_bundle(folder, build=TRUE_BUILD, run=LEAK_RUN, job_id=folder.name, **kwargs)
    return host.test_submission(bundle_dir, info.machine, info, warm=pool), bundle_dir


def machine_of(folder: Path, **kwargs):
    return make_bundle(folder, job_id=folder.name, **kwargs)[1].machine


# --------------------------------------------------------------------------- LXC


@pytest.fixture
def own_base():
    """A base container of this test's own on the shared base's rootfs (a link to it:
    LXC wants the container's name in its rootfs path; only the config is new), so the
    test can change a base without touching the shared one."""
    lxcpath = Path("/var/lib/lxc")
    name = f"vmchecker-test-base-{secrets.token_hex(3)}"
    (lxcpath / name).mkdir()
    (lxcpath / name / "rootfs").symlink_to(lxcpath / "vmchecker-base" / "rootfs")
    config = (lxcpath / "vmchecker-base" / "config").read_text()
    config = config.replace("lxc.uts.name = vmchecker-base", f"lxc.uts.name = {name}")
    config = config.replace(f"dir:{lxcpath}/vmchecker-base/rootfs", f"dir:{lxcpath}/{name}/rootfs")
    (lxcpath / name / "config").write_text(config)
    yield name
    shutil.rmtree(lxcpath / name)   # the link goes, not what it points to


@pytest.mark.lxc
def test_lxc_warm_guest_serves_one_job_and_the_next_gets_another(lxc_host, tmp_path):
    pool = WarmPool(tmp_path / "warm").ensure()
    first = lxc_host.prepare_warm(machine_of(tmp_path / "m"), pool, os.getpid())
    second = lxc_host.prepare_warm(machine_of(tmp_path / "m"), pool, os.getpid())
    assert first and second and first.name != second.name
    assert {first.name, second.name} <= set(lxc_host.clones())

    job1, out1 = job(lxc_host, tmp_path / "warm1", pool)
    job2, out2 = job(lxc_host, tmp_path / "warm2", pool)
    job3, out3 = job(lxc_host, tmp_path / "cold3", pool)

    assert [j.status for j in (job1, job2, job3)] == ["done"] * 3, (job1.message, job2.message, job3.message)
    assert (job1.vm, job2.vm) == (first.name, second.name)   # oldest first, each once
    assert result_json(out1)["warm_guest"] is True and result_json(out2)["warm_guest"] is True
    assert result_json(out3)["warm_guest"] is False and job3.vm not in (first.name, second.name)
    assert [vmr(o, "run-stdout.vmr") for o in (out1, out2, out3)] == ["clean\n"] * 3
    assert not pool.take(first) and not pool.take(second)   # a used record cannot be claimed again
    assert pool.ready() == [] and pool.claimed() == []
    assert not {first.name, second.name} & set(lxc_host.clones())


@pytest.mark.lxc
def test_lxc_warm_guest_of_a_changed_base_is_dropped(lxc_host, own_base, tmp_path):
    pool = WarmPool(tmp_path / "warm").ensure()
    record = lxc_host.prepare_warm(machine_of(tmp_path / "m", vm=own_base), pool, os.getpid())
    assert record and record.name in lxc_host.clones()
    with open(Path("/var/lib/lxc") / own_base / "config", "a") as f:   # the base changes
        f.write("# changed after the warm guest was made\n")

    job1, out1 = job(lxc_host, tmp_path / "after", pool, vm=own_base)

    assert job1.status == "done", job1.message
    assert result_json(out1)["warm_guest"] is False and job1.vm != record.name
    assert record.name not in lxc_host.clones()
    assert pool.ready() == [] and pool.claimed() == []


@pytest.mark.lxc
def test_lxc_warm_guest_gone_from_under_its_record_runs_cold(lxc_host, tmp_path):
    pool = WarmPool(tmp_path / "warm").ensure()
    record = lxc_host.prepare_warm(machine_of(tmp_path / "m"), pool, os.getpid())
    lxc_host.destroy_clone(record.name)

    job1, out1 = job(lxc_host, tmp_path / "after", pool)

    assert job1.status == "done" and result_json(out1)["warm_guest"] is False, job1.message
    assert pool.ready() == [] and pool.claimed() == []


@pytest.mark.lxc
def test_lxc_warm_guest_grades_like_a_cold_one(lxc_host, tmp_path):
    """A warm clone was parked (the guest folder laid out, vmchecker-step's checks
    passed); its job's copy-in only writes the job's files over that layout: the hello
    builds from the student's files and earns the same grade as on a cold clone."""
    pool = WarmPool(tmp_path / "warm").ensure()
    assert lxc_host.prepare_warm(machine_of(tmp_path / "m"), pool, os.getpid())
    bundle_dir, info = make_bundle(tmp_path / "warm1", job_id="warm1")
    warm = lxc_host.test_submission(bundle_dir, info.machine, info, warm=pool)
    cold, cold_dir = run_job(lxc_host, tmp_path / "cold1")

    assert (warm.status, cold.status) == ("done", "done"), (warm.message, cold.message)
    assert result_json(bundle_dir)["warm_guest"] is True and result_json(cold_dir)["warm_guest"] is False
    assert warm.steps["build"].succeeded and warm.steps["run"].succeeded
    assert vmr(bundle_dir, "grade.vmr") == vmr(cold_dir, "grade.vmr") != ""
    assert vmr(bundle_dir, "run-stdout.vmr") == vmr(cold_dir, "run-stdout.vmr")


@pytest.mark.lxc
def test_lxc_warm_guest_is_not_made_where_the_student_cannot_reach_the_folder(lxc_host, tmp_path):
    pool = WarmPool(tmp_path / "warm").ensure()
    closed = {"guest_base_path": "/root/vmchecker"}   # /root is closed to the student

    with pytest.raises(ExecutorError):
        lxc_host.prepare_warm(machine_of(tmp_path / "m", **closed), pool, os.getpid())
    job1, out1 = job(lxc_host, tmp_path / "cold", pool, **closed)

    assert pool.ready() == [] and pool.claimed() == []
    assert job1.status == "error" and result_json(out1)["warm_guest"] is False
    assert "cannot work in /root/vmchecker/job" in vmr(out1, "vmchecker-stderr.vmr")


# --------------------------------------------------------------------------- KVM


def kvm_job(host, folder: Path, pool: WarmPool | None):
    return job(host, folder, pool, timeout=60, **kvm_machine())


def token() -> Path:
    return KVM_STATE / "jobs" / ".vmchecker-kvm-base.warm"


@pytest.mark.kvm
def test_kvm_warm_guest_serves_one_job_and_is_clean(own_domain, tmp_path):
    kvm_host = own_domain
    pool = WarmPool(tmp_path / "warm").ensure()
    machine = machine_of(tmp_path / "m", **kvm_machine())

    first = kvm_host.prepare_warm(machine, pool, os.getpid())
    assert first and token().read_text().strip() == first.name
    job1, out1 = kvm_job(kvm_host, tmp_path / "warm1", pool)
    second = kvm_host.prepare_warm(machine, pool, os.getpid())
    job2, out2 = kvm_job(kvm_host, tmp_path / "warm2", pool)
    job3, out3 = kvm_job(kvm_host, tmp_path / "cold3", pool)

    assert [j.status for j in (job1, job2, job3)] == ["done"] * 3, (job1.message, job2.message, job3.message)
    assert second and second.name != first.name
    assert [result_json(o)["warm_guest"] for o in (out1, out2, out3)] == [True, True, False]
    assert [vmr(o, "run-stdout.vmr") for o in (out1, out2, out3)] == ["clean\n"] * 3
    assert not pool.take(first) and not pool.take(second)   # a used record cannot be claimed again
    assert pool.ready() == [] and pool.claimed() == [] and not token().exists()


@pytest.mark.kvm
def test_kvm_warm_guest_used_by_another_job_meanwhile_is_dropped(own_domain, tmp_path):
    kvm_host = own_domain
    pool = WarmPool(tmp_path / "warm").ensure()
    record = kvm_host.prepare_warm(machine_of(tmp_path / "m", **kvm_machine()), pool, os.getpid())
    assert record

    other, out_other = kvm_job(kvm_host, tmp_path / "other", None)   # another tester's job, or one by hand
    job1, out1 = kvm_job(kvm_host, tmp_path / "after", pool)

    assert other.status == "done" and job1.status == "done", (other.message, job1.message)
    assert result_json(out_other)["warm_guest"] is False and result_json(out1)["warm_guest"] is False
    assert vmr(out1, "run-stdout.vmr") == "clean\n"
    assert not pool.take(record)
    assert pool.ready() == [] and pool.claimed() == [] and not token().exists()


# --------------------------------------------------------------------------- Docker


@pytest.fixture
def own_image(docker_host):
    """An image tag of this test's own (on the shared image), so the test can change the
    image a machine names without touching the shared tag."""
    api = docker_host.api()
    tag = f"vmck-test-warm:{secrets.token_hex(3)}"
    api.tag(DOCKER_IMAGE, *tag.split(":"))
    made: list[str] = []
    yield tag, made
    import docker

    for image in [tag, *made]:
        with contextlib.suppress(docker.errors.NotFound):   # gone with its last tag
            api.remove_image(image, force=True)


def docker_containers(host) -> set[str]:
    return set(host.containers())


@pytest.mark.docker
def test_docker_warm_guest_serves_one_job_and_the_next_gets_another(docker_host, tmp_path):
    pool = WarmPool(tmp_path / "warm").ensure()
    first = docker_host.prepare_warm(machine_of(tmp_path / "m", **docker_machine()), pool, os.getpid())
    assert first and first.name in docker_containers(docker_host)

    job1, out1 = job(docker_host, tmp_path / "warm1", pool, **docker_machine())
    job2, out2 = job(docker_host, tmp_path / "cold2", pool, **docker_machine())

    assert job1.status == "done" and job2.status == "done", (job1.message, job2.message)
    assert job1.vm == first.name and job2.vm != first.name
    assert [result_json(o)["warm_guest"] for o in (out1, out2)] == [True, False]
    assert [vmr(o, "run-stdout.vmr") for o in (out1, out2)] == ["clean\n"] * 2
    assert not pool.take(first) and pool.ready() == [] and pool.claimed() == []
    assert first.name not in docker_containers(docker_host)


@pytest.mark.docker
def test_docker_warm_guest_of_a_changed_image_is_dropped(docker_host, own_image, tmp_path):
    tag, made = own_image
    api = docker_host.api()
    pool = WarmPool(tmp_path / "warm").ensure()
    record = docker_host.prepare_warm(machine_of(tmp_path / "m", **docker_machine(image=tag)), pool, os.getpid())
    assert record
    box = api.create_container(tag, labels={"vmck-test": "warm"})   # the image changes: a commit of it
    made.append(api.commit(box["Id"])["Id"])
    api.remove_container(box["Id"], force=True)
    api.tag(made[0], *tag.split(":"))

    job1, out1 = job(docker_host, tmp_path / "after", pool, **docker_machine(image=tag))

    assert job1.status == "done", job1.message
    assert result_json(out1)["warm_guest"] is False and job1.vm != record.name
    assert record.name not in docker_containers(docker_host)
    assert pool.ready() == [] and pool.claimed() == []


@pytest.mark.kvm
def test_kvm_warm_guest_is_not_made_where_the_student_cannot_reach_the_folder(own_domain, tmp_path):
    kvm_host = own_domain
    pool = WarmPool(tmp_path / "warm").ensure()
    closed = {**kvm_machine(), "guest_base_path": "/root/vmchecker"}   # /root is closed to the student

    with pytest.raises(ExecutorError):
        kvm_host.prepare_warm(machine_of(tmp_path / "m", **closed), pool, os.getpid())
    job1, out1 = job(kvm_host, tmp_path / "cold", pool, timeout=60, **closed)

    assert pool.ready() == [] and not token().exists()
    assert job1.status == "error" and result_json(out1)["warm_guest"] is False
    assert "cannot work in /root/vmchecker/job" in vmr(out1, "vmchecker-stderr.vmr")
