"""Configuration: typed loading and errors that name the file, the key and the reason."""

from __future__ import annotations

import datetime as dt

import pytest
import yaml

from tests.util import write_course
from vmchecker import config, confparse, tester_config
from vmchecker.errors import ConfigError, NotFound


def _load_with(tmp_path, extra):
    return config.load_course(write_course(tmp_path, extra=extra))


def test_design_example_loads(course):
    a = course.assignment("1-hello")
    assert a.deadline == dt.datetime(2026, 3, 1, 23, 55)
    assert a.max_submission_size == 10 * 1024 * 1024
    assert a.penalty_weights == [0.5, 0.5, 1.0]
    assert course.machines[a.machine].type == "lxc"
    assert course.course.holidays[0].end == dt.datetime(2026, 4, 20)
    assert course.repository == course.root / "repo"


def test_grading_keys_default_to_no_points_without_evidence(course):
    a = course.assignment("1-hello")
    assert (a.points_on_failure, a.max_points, a.ceiling) == (0.0, None, a.total_points)
    m = course.machines["linux"]
    assert (m.student_user, m.check_script, m.limits.disk_mb) == ("student", "", 1024)


def test_grading_keys_are_read(tmp_path):
    course = _load_with(tmp_path, {
        "assignments": {"defaults": {"max_points": 12}, "1-hello": {"points_on_failure": 1.5}},
        "machines": {"linux": {"student_user": "pupil", "check_script": "check.sh", "limits": {"disk_mb": 64}}},
    })
    a = course.assignment("1-hello")
    assert (a.points_on_failure, a.max_points, a.ceiling) == (1.5, 12.0, 12.0)
    m = course.machines["linux"]
    assert (m.student_user, m.check_script, m.limits.disk_mb) == ("pupil", "check.sh", 64)
    assert m.limits.memory_mb == 512  # the other limits keep their defaults


def test_find_course_through_global_file(course):
    assert config.find_course("so").path == course.path
    with pytest.raises(NotFound, match="no course 'nope'"):
        config.find_course("nope")


@pytest.mark.parametrize(
    "extra, key, reason",
    [
        ({"course": {"colour": "red"}}, "course.colour", "unknown key"),
        ({"course": {"public_results": "yes"}}, "course.public_results", "expected true or false"),
        ({"course": {"upload_active_from": "2026-13-01 00:00:00"}}, "course.upload_active_from", "bad date"),
        ({"assignments": {"1-hello": {"deadline": "tomorrow"}}}, "assignments.1-hello.deadline", "bad date"),
        ({"assignments": {"1-hello": {"machine": "windows"}}}, "assignments.1-hello.machine", "names machine 'windows'"),
        ({"machines": {"linux": {"testers": ["t9"]}}}, "machines.linux.testers[0]", "names tester 't9'"),
        ({"machines": {"linux": {"type": "podman"}}}, "machines.linux.type", "unknown machine type"),
        ({"machines": {"linux": {"type": "docker"}}}, "machines.linux.image", "needs the image its jobs run in"),
        ({"assignments": {"defaults": {"penalty_weights": [0.5, "x"]}}}, "assignments.1-hello.penalty_weights[1]",
         "expected a number"),
        ({"assignments": {"1-hello": {"timeout": "90s"}}}, "assignments.1-hello.timeout", "expected an integer"),
        ({"assignments": {"1-hello": {"max_submission_size": "lots"}}}, "assignments.1-hello.max_submission_size",
         "bad size"),
        ({"testers": {"t1": {"slots": 0}}}, "testers.t1.slots", "at least 1"),
        ({"storer": {"ssh_keys": "x"}}, "storer.ssh_keys", "unknown key"),
        ({"assignments": {"1-hello": {"points_on_failure": -1}}}, "assignments.1-hello.points_on_failure",
         "must not be negative"),
        ({"assignments": {"1-hello": {"points_on_failure": 11}}}, "assignments.1-hello.points_on_failure",
         "more than total_points"),
        ({"assignments": {"1-hello": {"points_on_failure": 3, "max_points": 2}}}, "assignments.1-hello.max_points",
         "must be at least points_on_failure"),
        ({"assignments": {"defaults": {"max_points": "lots"}}}, "assignments.1-hello.max_points",
         "expected a number"),
        ({"machines": {"linux": {"student_user": "Bad User"}}}, "machines.linux.student_user", "bad user name"),
        ({"machines": {"linux": {"limits": {"disk_mb": 0}}}}, "machines.linux.limits.disk_mb", "at least 1"),
        ({"machines": {"linux": {"type": "vmware", "vmware_password": "secret"}}}, "machines.linux.vmware_password",
         "name that file in vmware_credentials"),
        ({"machines": {"linux": {"type": "vmware", "revert": "overlay"}}}, "machines.linux.revert",
         "snapshot or linked-clone"),
        ({"machines": {"linux": {"student_user": "root"}}}, "machines.linux.student_user",
         "could write its own grade"),
    ],
)
def test_errors_name_file_key_and_reason(tmp_path, extra, key, reason):
    with pytest.raises(ConfigError) as info:
        _load_with(tmp_path, extra)
    err = info.value
    assert str(err.file).endswith("so/config.yaml")
    assert err.key == key
    assert reason in err.message
    assert str(err.file) in err.message and key in err.message


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        config.load_course(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("course: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load_course(bad)


def test_python_objects_are_not_constructed(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("course: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load_course(evil)


def test_tester_config_and_machine_overrides(course, tmp_path):
    path = tmp_path / "tester.yaml"
    path.write_text(yaml.safe_dump({
        "tester": {"slots": 3, "storer_daemon": "http://127.0.0.1:19999/"},
        "machines": {"linux": {"vm": "base-t1", "limits": {"memory_mb": 256}}},
    }))
    tc = tester_config.load_tester(path)
    assert tc.queue_dir == tmp_path / "queue"
    m = tc.machine(course.machines["linux"])
    assert m.vm == "base-t1" and m.limits.memory_mb == 256 and m.limits.pids == 256
    path.write_text(yaml.safe_dump({"machines": {"linux": {"vmm": "x"}}}))
    with pytest.raises(ConfigError, match=r"machines\.linux\.vmm"):
        tester_config.load_tester(path)


def test_parse_size_and_datetime():
    assert confparse.parse_size("512K") == 512 * 1024
    assert confparse.parse_size(100) == 100
    assert confparse.parse_datetime("2026-03-01 23:55:00") == dt.datetime(2026, 3, 1, 23, 55)
    with pytest.raises(ValueError):
        confparse.parse_datetime("2026-03-01")


def test_tester_notifies_where_the_bundle_says_and_falls_back_to_its_own_key(tmp_path, caplog):
    """One address: the storer's bundles carry its daemon's URL; tester.storer_daemon is
    only for a bundle that carries none, and a disagreement is logged with both values."""
    from vmchecker import tester_config

    path = tmp_path / "tester.yaml"
    path.write_text(yaml.safe_dump({"tester": {"storer_daemon": "http://10.0.0.1:1/"}}))
    cfg = tester_config.load_tester(path)
    assert cfg.notify_url("") == "http://10.0.0.1:1/"
    with caplog.at_level("WARNING"):
        assert cfg.notify_url("http://10.0.0.9:19999/") == "http://10.0.0.9:19999/"
    assert "bundles say notify http://10.0.0.9:19999/" in caplog.text and "storer_daemon http://10.0.0.1:1/" in caplog.text
    path.write_text(yaml.safe_dump({"tester": {}}))
    assert tester_config.load_tester(path).notify_url("http://10.0.0.9:19999/") == "http://10.0.0.9:19999/"
