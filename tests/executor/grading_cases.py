"""The grading contract's cases: one course, the student archives that try to earn points
they should not, and the grade the storer would give each job.

The course is written the way the contract asks a course to be: ``build.sh`` runs
``make`` (as the student user); ``run.sh`` runs as the trusted guest user, starts the
student's program only through ``vmchecker-run --timeout``, keeps its output in the
results folder and writes grade lines to ``$VMCHECKER_GRADE`` (none: full points). A
submission passes when ``./hello`` exits 0 and prints the line of ``expected.txt`` (a
test, from tests.zip); other lines are allowed, so a program printing ``+5: bonus`` is
correct.

:func:`final_grade` weighs a job's results exactly as the storer does when they land
(``vmchecker.storer.outcomes.land_results``): :func:`vmchecker.evidence.judge` on
``result.json`` and the tests' ``grade.vmr``, then :func:`vmchecker.penalty.compute`.
Used by tests/executor/test_grading_contract.py (each case on LXC and KVM) and
tests/test_grading_path.py (through the daemon, SFTP and the queue manager).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from tests.util import HELLO_C, HELLO_MAKEFILE
from vmchecker import evidence, penalty
from vmchecker.assignments import Assignment
from vmchecker.contract import GRADE_VMR, RESULT_JSON
from vmchecker.storer.outcomes import read_result

BUILD_SH = "#!/bin/bash\nset -e\nmake\n"
EXPECTED = "Hello, world!"
TESTS = {"expected.txt": EXPECTED + "\n"}
HELPER_TIMEOUT = 5      # seconds run.sh gives ./hello (vmchecker-run --timeout)
OUTPUT_CAP = 65536      # bytes of ./hello's output run.sh keeps


def run_sh(timeout: float = HELPER_TIMEOUT) -> str:
    """The course's run.sh, giving ./hello ``timeout`` seconds."""
    return f"""\
#!/bin/bash
# The tests of 1-hello: ./hello must exit 0 within {timeout} s and print the line of
# expected.txt. Runs as the trusted guest user; ./hello only through vmchecker-run.
set -u
: > "$VMCHECKER_GRADE"
fail() {{
    echo "FAIL: $1"
    echo "-10: $1" >> "$VMCHECKER_GRADE"
    exit 0
}}
[ -x ./hello ] || fail "no hello program was built"
vmchecker-run --timeout {timeout} ./hello | head -c {OUTPUT_CAP} > "$VMCHECKER_RESULTS/out.vmr"
status=${{PIPESTATUS[0]}}
cat "$VMCHECKER_RESULTS/out.vmr"
if [ "$status" -eq 124 ]; then fail "hello did not finish within {timeout} s"
elif [ "$status" -gt 128 ]; then fail "hello was killed by signal $((status - 128))"
elif [ "$status" -ne 0 ]; then fail "hello exited with status $status"
elif ! grep -qxF -f expected.txt "$VMCHECKER_RESULTS/out.vmr"; then fail "hello did not print the expected line"
fi
echo "PASS: hello printed the expected line"
"""


def program(body: str, prelude: str = "") -> str:
    """A C file whose main() is ``body`` (``prelude``: functions before it)."""
    headers = ("errno.h", "fcntl.h", "signal.h", "stdio.h", "stdlib.h", "string.h", "unistd.h")
    return "".join(f"#include <{h}>\n" for h in headers) + prelude + f"int main(void) {{\n{body}\n}}\n"


def with_makefile(source: str, **more: str) -> dict[str, str]:
    return {"hello.c": source, "Makefile": HELLO_MAKEFILE, **more}


# --------------------------------------------------------------------------- archives

CORRECT = {"hello.c": HELLO_C, "Makefile": HELLO_MAKEFILE}
EMPTY: dict[str, str] = {}
COMPILE_ERROR = with_makefile("int main(void) { return x; }\n")
INFINITE_LOOP = with_makefile(program("for (;;) ;"))
FORK_BOMB = with_makefile(program("for (;;) fork();"))
# Prints forever on both outputs: stdout into run.sh's pipe, stderr into the step's.
OUTPUT_FLOOD = with_makefile(program('for (;;) { fputs("y\\n", stdout); fputs("n\\n", stderr); }'))
MEMORY_HOG = with_makefile(program(
    "for (size_t i = 0; i < 4096; i++) { char *p = malloc(1 << 20); if (!p) return 3; memset(p, 1, 1 << 20); }\n"
    'puts("Hello, world!");\nreturn 0;'))
# Kills its parent, and each ancestor after it, with SIGKILL; says on stderr which kill
# worked ("kill(NAME): done"). It prints nothing else: if a kill cut the tests short and
# that counted as a pass, it would be 10.
KILLS_PARENT = with_makefile(program("""\
pid_t pids[32];
char names[32][64];
int n = 0;
for (pid_t pid = getppid(); pid > 1 && n < 32; n++) {   /* the ancestors, before any is killed */
    char path[64];
    int parent = 0;
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f || fscanf(f, "%*d (%63[^)]) %*c %d", names[n], &parent) != 2) { if (f) fclose(f); break; }
    fclose(f);
    pids[n] = pid;
    pid = parent;
}
for (int i = 0; i < n; i++) {
    int r = kill(pids[i], SIGKILL);
    fprintf(stderr, "kill(%s): %s\\n", names[i], r ? strerror(errno) : "done");
}
return 0;"""))

# A correct program that, while it runs, tries to write its own grade every way it can
# and prints a grade-like line on both outputs. Each attempt reports on stderr.
FORGE = """\
static void forge(const char *path) {
    FILE *f = path ? fopen(path, "a") : NULL;
    if (!f) { fprintf(stderr, "forge %s: %s\\n", path ? path : "(unset)", strerror(errno)); return; }
    fputs("+90: forged by the program\\n", f);
    fprintf(stderr, "forge %s: %s\\n", path, fclose(f) ? strerror(errno) : "written");
}
"""
FORGING_PROGRAM = with_makefile(program(
    'forge("grade.vmr");\nforge(getenv("VMCHECKER_GRADE"));\nforge("../results/grade.vmr");\n'
    'forge("/vmchecker/results/grade.vmr");\nforge("../results/forged.vmr");\nforge("../course/run.sh");\n'
    'fprintf(stderr, "unlink expected.txt: %s\\n", unlink("expected.txt") ? strerror(errno) : "done");\n'
    'puts("Hello, world!");\nputs("+5: bonus");\nfputs("+5: bonus\\n", stderr);\nreturn 0;', FORGE))

# What the build tries (attack.sh, run by the Makefile as the student user). Each
# attempt prints "attack NAME: refused" or "attack NAME: WORKED" on the build's stdout.
# Those in REFUSED_ATTACKS must fail; the others are allowed and harmless (the job
# folder is the student's: nothing in it is read as a grade or run as the course's).
GRADE_ATTACKS = ("write $VMCHECKER_GRADE", "write ../results/grade.vmr", "create ../results/forged.vmr",
                 "rename ../results")
COURSE_ATTACKS = ("overwrite ../course/run.sh", "remove ../course/run.sh", "rename ../course/run.sh",
                  "chmod ../course/run.sh", "create ../course/forged.sh", "rename ../course")
TESTS_ATTACKS = ("overwrite expected.txt", "truncate expected.txt", "remove expected.txt", "rename expected.txt",
                 "chmod expected.txt", "symlink over expected.txt")
REFUSED_ATTACKS = GRADE_ATTACKS + COURSE_ATTACKS + TESTS_ATTACKS
SYMLINK_ATTACKS = ("symlink out.txt", "symlink grade.vmr", "symlink out.vmr", "symlink leak.vmr")
ATTACK_SH = r"""
try() { what=$1; shift; if "$@" 2>/dev/null; then echo "attack $what: WORKED"; else echo "attack $what: refused"; fi; }
forged='+90: forged by the build'
try 'write ./grade.vmr' sh -c "echo '$forged' >> grade.vmr"
try 'write $VMCHECKER_GRADE' sh -c "echo '$forged' >> \"\$VMCHECKER_GRADE\""
try 'write ../results/grade.vmr' sh -c "echo '$forged' >> ../results/grade.vmr"
try 'create ../results/forged.vmr' sh -c "echo '$forged' > ../results/forged.vmr"
try 'rename ../results' mv ../results ../results.old
try 'overwrite ../course/run.sh' sh -c "printf '#!/bin/sh\necho \"$forged\" > \"\$VMCHECKER_GRADE\"\n' > ../course/run.sh"
try 'remove ../course/run.sh' rm -f ../course/run.sh
try 'rename ../course/run.sh' mv ../course/run.sh ../course/run.old
try 'chmod ../course/run.sh' chmod 777 ../course/run.sh
try 'create ../course/forged.sh' sh -c 'echo exit 0 > ../course/forged.sh'
try 'rename ../course' mv ../course ../course.old
try 'shadow ./run.sh' sh -c "printf '#!/bin/sh\necho \"$forged\" > \"\$VMCHECKER_GRADE\"\n' > run.sh && chmod +x run.sh"
try 'overwrite expected.txt' sh -c 'echo owned > expected.txt'
try 'truncate expected.txt' truncate -s 0 expected.txt
try 'remove expected.txt' rm -f expected.txt
try 'rename expected.txt' mv expected.txt expected.old
try 'chmod expected.txt' chmod 666 expected.txt
try 'symlink over expected.txt' ln -sfn /dev/null expected.txt
try 'symlink out.txt' ln -sfn ../results/grade.vmr out.txt
try 'symlink grade.vmr' ln -sfn ../results/grade.vmr grade.vmr
try 'symlink out.vmr' ln -sfn ../results/grade.vmr out.vmr
try 'symlink leak.vmr' ln -sfn /etc/shadow leak.vmr
# A background process that outlives the build and keeps writing the grade.
setsid nohup sh -c 'echo $$ > bg.pid; while :; do
  echo "+90: forged in the background" >> grade.vmr; echo "+90" >> "$VMCHECKER_GRADE"; echo "+90" >> ../results/grade.vmr
  sleep 0.2; done' > /dev/null 2>&1 < /dev/null &
i=0; while [ ! -s bg.pid ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
echo "attack background process: started $(cat bg.pid 2>/dev/null)"
"""
def attack_outcomes(build_stdout: str) -> dict[str, str]:
    """``{attack: "refused" | "WORKED" | ...}`` from attack.sh's lines in the build's output."""
    found = {}
    for line in build_stdout.splitlines():
        if line.startswith("attack ") and ": " in line:
            name, _, outcome = line.removeprefix("attack ").rpartition(": ")
            found[name] = outcome
    return found


FORGING_MAKEFILE = """\
hello: hello.c
\tgcc -Wall -o hello hello.c
\techo "+90: forged by the Makefile" >> grade.vmr
\t-echo "+90: forged by the Makefile" >> "$$VMCHECKER_GRADE"
\tsh attack.sh
"""
# ./hello of the forging build: reports whether the build's background process is still
# there when the tests run it (same user: kill(pid, 0) tells), then prints what it prints.
BACKGROUND_CHECK = """\
static void background(void) {
    int pid = 0;
    FILE *f = fopen("bg.pid", "r");
    if (f) { if (fscanf(f, "%d", &pid) != 1) pid = 0; fclose(f); }
    fprintf(stderr, "background process %d: %s\\n", pid, pid > 0 && kill(pid, 0) == 0 ? "ALIVE" : "gone");
}
"""
FORGED_ARCHIVE = {"grade.vmr": "+90: forged by the archive\n", "results/grade.vmr": "+90: forged by the archive\n",
                  "forged.vmr": "+90: forged by the archive\n", "attack.sh": ATTACK_SH, "Makefile": FORGING_MAKEFILE}
# A correct program whose build attacks the grade, the course's files and the tests.
FORGING_BUILD = {"hello.c": program(f'background();\nputs("{EXPECTED}");\nreturn 0;', BACKGROUND_CHECK),
                 **FORGED_ARCHIVE}
# The same build with a wrong program (prints "owned", what the build writes into
# expected.txt): only a build that replaced the tests or run.sh could make it pass.
WRONG_FORGING_BUILD = {"hello.c": program('background();\nputs("owned");\nreturn 0;', BACKGROUND_CHECK),
                       **FORGED_ARCHIVE}


# --------------------------------------------------------------------------- the grade

ASSIGNMENT = Assignment(id="1-hello", deadline=dt.datetime(2099, 1, 1), machine="linux", total_points=10,
                        points_on_failure=0, penalty_weights=[0.0], penalty_limit=0)
# The same without a ceiling: a forged "+90" would show as 100 here, not hidden by max_points.
UNCAPPED = dataclasses.replace(ASSIGNMENT, max_points=1000)
UPLOAD_TIME = dt.datetime(2026, 2, 20, 10, 0, 0)


@dataclass(frozen=True)
class Grade:
    """The final grade.vmr the storer would write for a job, and the grade it gives."""

    text: str                  # the final grade.vmr
    points: float | None       # under ASSIGNMENT (ceiling 10)
    uncapped: float | None     # under UNCAPPED (no ceiling that matters)
    reason: str | None         # the storer's reason when the run earned nothing


def _tests_grade(path: Path) -> str | None:
    """The tests' grade file as the storer reads it (absent or a link: None)."""
    if path.is_symlink() or not path.is_file():
        return None
    return path.read_text(encoding="utf-8", errors="replace")


def final_grade(results: Path) -> Grade:
    """Weigh a job's ``results`` folder (the tester's) as the storer does when it lands."""
    verdict = evidence.judge(read_result(results / RESULT_JSON), _tests_grade(results / GRADE_VMR), ASSIGNMENT)

    def points(assignment: Assignment) -> float | None:
        return penalty.compute(assignment, [], UPLOAD_TIME, verdict.text).grade

    return Grade(verdict.text, points(ASSIGNMENT), points(UNCAPPED), verdict.reason)
