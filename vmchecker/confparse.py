"""The schema-independent half of configuration: YAML in and out, the textual forms of
dates, sizes, addresses and names, and :func:`build`, which fills a frozen dataclass from a
mapping.

:mod:`vmchecker.config` says which keys exist (the dataclasses) and how the files fit
together; this module knows nothing of courses or testers. It turns any dataclass
whose fields are ``str``, ``int``, ``float``, ``bool``, :class:`When`, :class:`Size`,
lists, mappings, optionals or other such dataclasses into a validator whose every
error is a :class:`ConfigError` naming the file, the key path
(``assignments.1-hello.deadline``) and what is wrong. The same date and YAML helpers
serve the files the storer writes itself (submission-config, grades), so every file
spells a date one way. Only PyYAML's safe subset is used.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
import re
import sys
import types
from pathlib import Path

import yaml

from vmchecker.contract import ID_RE
from vmchecker.errors import ConfigError

TYPE_CHECKING = False   # typing.TYPE_CHECKING, without importing typing on a command's path
if TYPE_CHECKING:
    from typing import Any

log = logging.getLogger(__name__)

DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


# --------------------------------------------------------------------------- values


def parse_datetime(value: Any) -> dt.datetime:
    """Parse ``YYYY-MM-DD HH:MM:SS`` (local time, naive) or pass a datetime through."""
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=None, microsecond=0) if value.tzinfo else value
    if isinstance(value, str):
        text = value.strip()
        try:
            return _fixed_datetime(text) or dt.datetime.strptime(text, DATE_FORMAT)
        except ValueError:
            pass
    raise ValueError(f"bad date {value!r}: expected YYYY-MM-DD HH:MM:SS")


def _fixed_datetime(text: str) -> dt.datetime | None:
    """``YYYY-MM-DD HH:MM:SS`` with every digit written (how the files spell a date) read
    without strptime, whose first call costs a command 13 ms (it imports _strptime and
    builds its locale's patterns); None for any other form, which strptime then reads.
    ValueError for a date out of range, as strptime."""
    if (len(text) != 19 or text[4] != "-" or text[7] != "-" or text[10] != " " or text[13] != ":"
            or text[16] != ":" or not (digits := text[:4] + text[5:7] + text[8:10] + text[11:13]
                                       + text[14:16] + text[17:]).isascii() or not digits.isdigit()):
        return None
    return dt.datetime(int(text[:4]), int(text[5:7]), int(text[8:10]), int(text[11:13]), int(text[14:16]),
                       int(text[17:]))


def format_datetime(value: dt.datetime) -> str:
    """The one textual form of a date in files and output."""
    return value.strftime(DATE_FORMAT)


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]?)i?B?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def parse_size(value: Any) -> int:
    """Parse a byte size: an integer, or a string such as ``10M``, ``512K``, ``1G``."""
    if isinstance(value, bool):
        raise ValueError(f"bad size {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"bad size {value!r}: must not be negative")
        return value
    if isinstance(value, str):
        match = _SIZE_RE.match(value)
        if match:
            return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()])
    raise ValueError(f"bad size {value!r}: expected bytes or a number with K, M or G")


def parse_host_port(value: str, default_port: int | None = None) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or (with ``default_port``) ``HOST`` -> (host, port).
    Port 0 is accepted: to listen on, it means any free port."""
    text = str(value).strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, ""
    if not port and default_port is not None:
        port = str(default_port)
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"bad address {value!r}: expected HOST:PORT")
    return host, int(port)


def check_id(value: str, file: Path, key: str, what: str) -> None:
    """A name the files use as a folder or a key (course, assignment, machine, tester):
    ConfigError unless it matches :data:`ID_RE`."""
    if not ID_RE.match(str(value)):
        raise ConfigError(file, key, f"bad {what} {value!r}: use letters, digits, '_', '-', '.'")


class Size(int):
    """Field type: a byte size, written as ``10M`` (read with :func:`parse_size`)."""


class When(dt.datetime):
    """Field type: a local date and time, written as ``YYYY-MM-DD HH:MM:SS``."""


# --------------------------------------------------------------------------- YAML


_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_SAFE_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def safe_load(text: str) -> Any:
    """``yaml.safe_load`` through libyaml where PyYAML has it: the same safe subset,
    ten times faster (the daemon reads a submission's YAML on every call)."""
    return yaml.load(text, Loader=_SAFE_LOADER)


def safe_dump(data: Any, **options: Any) -> str:
    """``yaml.safe_dump`` through libyaml where PyYAML has it."""
    return yaml.dump(data, Dumper=_SAFE_DUMPER, **options)


def read_yaml(path: Path | str) -> Any:
    """``yaml.safe_load`` a file; errors name the file (and line, for syntax)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, "", "no such file") from None
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read: {exc.strerror}") from None
    try:
        return safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(path, "", f"not valid YAML: {exc}") from None


# --------------------------------------------------------------------------- builder


def _type_name(tp: Any) -> str:
    names = {
        str: "a string", int: "an integer", float: "a number", bool: "true or false",
        When: "a date YYYY-MM-DD HH:MM:SS", Size: "a size such as 10M",
    }
    origin = _origin(tp)
    if origin is list:
        return f"a list of {_type_name(tp.__args__[0]).split(' ', 1)[1]}s"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return names.get(tp, str(tp))


def _convert(tp: Any, value: Any, file: Path, key: str) -> Any:
    """Check ``value`` against ``tp`` and convert it; raise ConfigError naming ``key``."""
    origin = _origin(tp)
    if origin is types.UnionType:
        if value is None:
            return None
        (inner,) = [a for a in tp.__args__ if a is not type(None)]
        return _convert(inner, value, file, key)

    def wrong() -> ConfigError:
        return ConfigError(file, key, f"expected {_type_name(tp)}, got {value!r}")

    if tp is When:
        try:
            return parse_datetime(value)
        except ValueError as exc:
            raise ConfigError(file, key, str(exc)) from None
    if tp is Size:
        try:
            return parse_size(value)
        except ValueError as exc:
            raise ConfigError(file, key, str(exc)) from None
    if tp is bool:
        if not isinstance(value, bool):
            raise wrong()
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong()
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong()
        return float(value)
    if tp is str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise wrong()
        return str(value)
    if origin is list:
        if not isinstance(value, list):
            raise wrong()
        (inner,) = tp.__args__
        return [_convert(inner, item, file, f"{key}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise wrong()
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, file, key)
    raise TypeError(f"unsupported config type {tp!r}")  # a bug in the schema, not in the file


def _origin(tp: Any) -> Any:
    """``typing.get_origin`` for the types a schema is written in: ``list`` for
    ``list[str]``, ``dict`` for ``dict[str, int]``, :class:`types.UnionType` for
    ``X | None``; None for a plain class."""
    if isinstance(tp, types.UnionType):
        return types.UnionType
    return tp.__origin__ if isinstance(tp, types.GenericAlias) else None


@functools.cache
def _schema(cls: type) -> tuple[dict[str, Any], dict[str, dataclasses.Field]]:
    """A dataclass's field types and fields, worked out once a process: the types are
    strings (``from __future__ import annotations``), evaluated here, and a course
    builds one class many times (each assignment, tester, machine).

    The strings are evaluated as ``typing.get_type_hints`` does (in the namespace of
    the module that wrote each class of the MRO) without importing ``typing``, which
    nothing else on a command's path loads: 2-3 ms of every ``vmchecker-submit``. A
    schema is written in builtin generics and ``X | None`` (ruff's UP rules keep it so),
    which need nothing of ``typing``; anything else is refused by :func:`_convert`."""
    hints: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        namespace = {**vars(klass), **vars(sys.modules[klass.__module__])}   # the module's names first
        for name, annotation in vars(klass).get("__annotations__", {}).items():
            hints[name] = eval(annotation, namespace) if isinstance(annotation, str) else annotation
    return hints, {f.name: f for f in dataclasses.fields(cls)}


def build(cls: type, data: Any, file: Path, key: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown and missing keys."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(file, key, f"expected a mapping, got {data!r}")
    hints, fields = _schema(cls)
    prefix = f"{key}." if key else ""
    unknown = sorted(str(k) for k in data if k not in fields)
    if unknown:
        raise ConfigError(
            file, prefix + unknown[0],
            f"unknown key (known keys here: {', '.join(fields)})",
        )
    values = {}
    for name, f in fields.items():
        if name in data:
            values[name] = _convert(hints[name], data[name], file, prefix + name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(file, prefix + name, "missing required key")
    return cls(**values)


def deep_merge(base: dict, overrides: dict) -> dict:
    """``base`` with ``overrides`` laid over it, nested mappings merged key by key."""
    merged = dict(base)
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = deep_merge(merged[k], v)
        else:
            merged[k] = v
    return merged
