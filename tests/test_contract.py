"""Each word the storer, the tester and the executor share is defined once, in
``vmchecker/contract.py``, and each exception once, in ``vmchecker/errors.py``.

A second definition is how a protocol drifts apart unseen (a status renamed on one side,
a file name changed on the other), so these tests read the package's source and name every
place that defines one again instead of importing it.
"""

from __future__ import annotations

import ast
import builtins
import enum
from pathlib import Path

import pytest

import vmchecker
from vmchecker import contract, errors

PACKAGE = Path(vmchecker.__file__).parent
CONTRACT = PACKAGE / "contract.py"
ERRORS = PACKAGE / "errors.py"

# Every upper-case name of contract.py is a constant no other module may assign.
CONSTANTS = {name for name in vars(contract) if name.isupper()}
# Names the constants had before they moved here: assigning one again is a copy too.
RETIRED = {"STATUS_DONE", "STATUS_ERROR", "RESULT_STATUSES", "ARCHIVE_NAME", "MEMBERS"}
ENUMS = {name: cls for name, cls in vars(contract).items()
         if isinstance(cls, type) and issubclass(cls, enum.Enum) and cls.__module__ == contract.__name__}
PATTERNS = {contract.JOB_ID_RE.pattern, contract.ACCOUNT_RE.pattern, contract.ID_RE.pattern}
LITERALS = (contract.GRADE_VMR, contract.RESULT_JSON, contract.VMCHECKER_STDERR, contract.SUBMISSION_CONFIG,
            contract.ARCHIVE)
# Exceptions that may live outside errors.py: private, documented, never leaving their module.
# rpc_http.py's wire errors mirror xmlrpc.client's; only rpc.py sees them, and turns
# them into RpcError (errors.py) as it does the stdlib's.
PRIVATE_EXCEPTIONS = {("storer/ssh_failures.py", "_UnknownHostKey"), ("migrate.py", "_Bad"),
                      ("storer/web/gate.py", "_LoginFirst"), ("rpc_http.py", "Fault"), ("rpc_http.py", "ProtocolError"),
                      ("rpc_http.py", "ResponseError"), ("rpc_http.py", "_Disconnected")}


def sources() -> list[tuple[str, ast.Module]]:
    """(path relative to the package, parsed module) for every module of the package."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        found.append((path.relative_to(PACKAGE).as_posix(), ast.parse(path.read_text(encoding="utf-8"), str(path))))
    return found


def module_level(body: list[ast.stmt]):
    """The statements that run at import: the body, and inside if/try/with blocks of it."""
    for stmt in body:
        yield stmt
        if isinstance(stmt, (ast.If, ast.Try, ast.With)):
            for block in ("body", "orelse", "finalbody"):
                yield from module_level(getattr(stmt, block, []))
            for handler in getattr(stmt, "handlers", []):
                yield from module_level(handler.body)


def assigned_names(stmt: ast.stmt) -> list[str]:
    if isinstance(stmt, ast.Assign):
        targets = stmt.targets
    elif isinstance(stmt, (ast.AnnAssign, ast.AugAssign)):
        targets = [stmt.target]
    else:
        return []
    names = []
    for target in targets:
        for node in ast.walk(target):
            if isinstance(node, ast.Name):
                names.append(node.id)
    return names


def value_strings(tree: ast.Module):
    """Every string constant that is a value, not documentation (a bare string statement)."""
    docs = {id(stmt.value) for stmt in ast.walk(tree)
            if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            yield node


def base_name(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Subscript):
        return base_name(node.value)
    return ""


def second_definitions(path: str, tree: ast.Module) -> list[str]:
    """What ``tree`` (the module at ``path``) defines that contract.py defines already."""
    found = []
    for stmt in module_level(tree.body):
        for name in assigned_names(stmt):
            if name.lstrip("_") in CONSTANTS | RETIRED:
                found.append(f"{path}:{stmt.lineno}: assigns {name} (import it from vmchecker.contract)")
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            if node.name in ENUMS:
                found.append(f"{path}:{node.lineno}: defines class {node.name} (import it from vmchecker.contract)")
            elif any(base_name(b).endswith("Enum") for b in node.bases):
                values = {stmt.value.value for stmt in node.body if isinstance(stmt, ast.Assign)
                          and isinstance(stmt.value, ast.Constant)}
                for name, cls in ENUMS.items():
                    if {m.value for m in cls} <= values:
                        found.append(f"{path}:{node.lineno}: class {node.name} repeats the values of"
                                     f" contract.{name}")
    for node in value_strings(tree):
        if any(p.strip("^$") in node.value for p in PATTERNS):
            found.append(f"{path}:{node.lineno}: repeats the job id or account pattern {node.value!r}")
        for literal in LITERALS:
            if literal in node.value:
                found.append(f"{path}:{node.lineno}: spells {literal!r} in {node.value!r}"
                             " (use the vmchecker.contract constant)")
    return found


def exception_classes(trees: list[tuple[str, ast.Module]]) -> list[tuple[str, ast.ClassDef]]:
    """Every class of the package that derives from an exception, as far as names tell:
    a built-in one, one of errors.py, a library's ``...Error``/``...Exception``, or a class
    of the package that is one of these (followed to a fixed point)."""
    known = {name for name, value in vars(builtins).items()
             if isinstance(value, type) and issubclass(value, BaseException)}
    known |= {name for name, value in vars(errors).items()
              if isinstance(value, type) and issubclass(value, BaseException)}
    classes = [(path, node) for path, tree in trees for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]

    def is_exception(name: str) -> bool:
        return name in known or name.endswith(("Error", "Exception"))

    changed = True
    while changed:
        changed = False
        for _, node in classes:
            if node.name not in known and any(is_exception(base_name(b)) for b in node.bases):
                known.add(node.name)
                changed = True
    return [(path, node) for path, node in classes if any(is_exception(base_name(b)) for b in node.bases)]


@pytest.fixture(scope="module")
def trees() -> list[tuple[str, ast.Module]]:
    return sources()


def test_the_contract_defines_what_this_test_looks_for():
    assert {"GRADE_VMR", "RESULT_JSON", "VMCHECKER_STDERR", "SUBMISSION_CONFIG", "ARCHIVE", "JOB_ID_RE",
            "ACCOUNT_RE"} <= CONSTANTS
    assert set(ENUMS) == {"SubmissionStatus", "JobState", "ResultStatus", "Stage"}


def test_each_protocol_word_is_defined_once(trees):
    found = [line for path, tree in trees if path != CONTRACT.name for line in second_definitions(path, tree)]
    assert not found, "defined again outside vmchecker/contract.py:\n" + "\n".join(found)


def test_each_exception_is_defined_in_errors(trees):
    found = []
    for path, node in exception_classes(trees):
        if path == ERRORS.name:
            continue
        if (path, node.name) in PRIVATE_EXCEPTIONS and ast.get_docstring(node):
            continue
        found.append(f"{path}:{node.lineno}: class {node.name} (define it in vmchecker/errors.py, or make it"
                     " private, documented and listed in PRIVATE_EXCEPTIONS)")
    assert not found, "exceptions outside vmchecker/errors.py:\n" + "\n".join(found)


@pytest.mark.parametrize("source, expected", [
    ('GRADE_VMR = "grade.vmr"\n', "assigns GRADE_VMR"),
    ('_ACCOUNT_RE = None\n', "assigns _ACCOUNT_RE"),
    ('STATUS_DONE: str = "done"\n', "assigns STATUS_DONE"),
    ('import enum\nclass Status(enum.StrEnum):\n    SAVED = "saved"\n    QUEUED = "queued"\n'
     '    RUNNING = "running"\n    DONE = "done"\n    ERROR = "error"\n', "repeats the values of contract.SubmissionStatus"),
    ('class JobState:\n    pass\n', "defines class JobState"),
    (f'import re\nX = re.compile(r"{contract.JOB_ID_RE.pattern}")\n', "repeats the job id or account pattern"),
    ('def f(p):\n    return p / "archive.zip"\n', "spells 'archive.zip'"),
    ('def f(p):\n    return f"{p}/result.json"\n', "spells 'result.json'"),
])
def test_the_checks_catch_a_copy(source, expected):
    found = second_definitions("x.py", ast.parse(source))
    assert any(expected in line for line in found), found


def test_the_checks_leave_imports_and_documentation_alone():
    source = ('"""Writes grade.vmr and result.json."""\n'
              "from vmchecker.contract import GRADE_VMR, JobState\n"
              "def f(p):\n    '''Reads archive.zip.'''\n    return p / GRADE_VMR  # not archive.zip\n")
    assert second_definitions("x.py", ast.parse(source)) == []


def test_exception_classes_are_found_through_the_package():
    tree = ast.parse("import paramiko\nclass A(paramiko.SSHException): pass\nclass B(A): pass\n"
                     "class C(ValueError): pass\nclass D: pass\n")
    assert [node.name for _, node in exception_classes([("x.py", tree)])] == ["A", "B", "C"]

