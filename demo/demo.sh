#!/usr/bin/env bash
# The demo behind `make demo` / `make demo-stop`: a storer and a tester on this one
# machine. Course `demo` (1-hello on machine `linux`, type lxc; 1-hello-kvm on
# `linux-kvm`, type kvm; 1-hello-docker on `linux-docker`, type docker; 1-hello-vmware on
# `linux-vmware`, type vmware, whose vSphere server is the test lab's of tests/lab/vmware,
# two VMs backed by containers), a tester folder, sshd on loopback for the storer's SFTP, the
# storer daemon, the queue manager and the web interface. `start` sets up what is missing, starts what is not running,
# submits the sample archive and prints its results; it is safe to run twice.
# Everything lives in demo-run/ next to this folder; the course is registered in the
# global config ($VMCHECKER_CONFIG, default /etc/vmchecker/config.yaml) so the commands
# in .venv/bin/ find it.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
bin="$top/.venv/bin"
run="$top/demo-run"
course="$run/course"
tester="$run/tester"
sshdir="$run/sshd"
logs="$run/log"
vmware="$run/vmware"
pids="$run/pids"
ssh_port=${DEMO_SSH_PORT:-22022}
daemon_port=${DEMO_DAEMON_PORT:-19999}
metrics_listen=${DEMO_METRICS:-127.0.0.1:9464}                # the storer daemon's Prometheus metrics
tester_metrics_listen=${DEMO_TESTER_METRICS:-127.0.0.1:9465}  # the queue manager's
web_listen=${DEMO_WEB:-127.0.0.1:8080}
ssh_user=vmchecker
export VMCHECKER_CONFIG=${VMCHECKER_CONFIG:-/etc/vmchecker/config.yaml}

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

alive() {  # alive NAME: the process of pids/NAME.pid is running
    local f="$pids/$1.pid"
    [ -s "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null
}

start_bg() {  # start_bg NAME COMMAND...: run in the background, remember its pid
    local name=$1; shift
    if alive "$name"; then
        echo "$name already running (pid $(cat "$pids/$name.pid"))"
        return
    fi
    setsid "$@" >>"$logs/$name.log" 2>&1 < /dev/null &
    echo $! > "$pids/$name.pid"
    echo "$name started (pid $!, log $logs/$name.log)"
}

stop_bg() {  # stop_bg NAME: SIGTERM, wait, then SIGKILL
    local f="$pids/$1.pid" pid
    [ -s "$f" ] || return 0
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
        echo "$1 stopped"
    fi
    rm -f "$f"
}

claim_registration() {
    # A demo run from another clone registered `demo` at its own path: point it here.
    "$bin/python" - "$VMCHECKER_CONFIG" "$course/config.yaml" <<'PY'
import sys, yaml, pathlib
glob, mine = pathlib.Path(sys.argv[1]), sys.argv[2]
data = yaml.safe_load(glob.read_text()) if glob.exists() else None
other = ((data or {}).get("courses") or {}).get("demo")
if other and other != mine:
    text = pathlib.Path(other).read_text() if pathlib.Path(other).exists() else ""
    if not text or "written by demo/demo.sh" in text:
        data["courses"]["demo"] = mine
        glob.write_text(yaml.safe_dump(data, sort_keys=False))
        print(f"course demo re-registered from {other} to {mine}")
    else:
        sys.exit(f"{glob}: course id 'demo' belongs to {other}, which is not a demo course")
PY
}

setup_course() {
    say "course demo in $course"
    claim_registration
    "$bin/vmchecker-init-course" storer "$course" --course-id demo
    cp "$here/course/build.sh" "$here/course/run.sh" "$course/"
    mkdir -p "$course/tests"
    # The demo owns this config: written anew each time from the demo's settings.
    cat > "$course/config.yaml" <<EOF
# The demo course written by demo/demo.sh (rewritten at each 'make demo').
course:
  id: demo
  name: vmchecker demo
  repository: repo
  upload_active_from: 2026-01-01 00:00:00
  upload_active_until: 2030-12-31 23:59:00
  admins: [grader]
  students: [student, newbie]           # nobody else may see the course or upload
  public_results: false
storer:
  daemon: http://127.0.0.1:$daemon_port/
  ssh_key: keys/id_ed25519
  known_hosts: keys/known_hosts
testers:
  t1: {host: 127.0.0.1, port: $ssh_port, user: $ssh_user, queue: $tester/queue, done: $tester/done, slots: 2}
machines:
  linux:
    type: lxc
    testers: [t1]
    vm: vmchecker-base
    build_script: build.sh
    run_script: run.sh
    limits: {memory_mb: 512, pids: 256, cpus: 1, output_kb: 256}
  linux-kvm:
    type: kvm
    testers: [t1]
    vm: vmchecker-kvm-base
    snapshot: clean
    revert: snapshot
    domain_type: auto
    base_image: /var/lib/vmchecker/kvm/base.qcow2
    build_script: build.sh
    run_script: run.sh
    limits: {memory_mb: 256, pids: 256, cpus: 1, output_kb: 256}
  linux-docker:
    type: docker
    testers: [t1]
    image: vmchecker-base:latest
    build_script: build.sh
    run_script: run.sh
    limits: {memory_mb: 512, pids: 256, cpus: 1, output_kb: 256}
  linux-vmware:
    type: vmware
    testers: [t1]
    vm: vmck-demo-1
    vms: [vmck-demo-1, vmck-demo-2]     # one VM per slot, each reverted to its snapshot per job
    snapshot: clean
    revert: snapshot
    vmware_url: $(cat "$vmware/url")
    vmware_user: $(cat "$vmware/user")
    vmware_credentials: $vmware/credentials   # the password, on the tester, mode 0600
    build_script: build.sh
    run_script: run.sh
    limits: {memory_mb: 512, pids: 256, cpus: 1, output_kb: 256}
assignments:
  defaults:
    timeout: 30
    total_points: 10
    penalty_weights: [0.5, 0.5, 1]
    penalty_limit: 4
    min_interval: 10
    max_submission_size: 1M
    show_grades_before_deadline: true   # the demo's deadline is far away
  1-hello:
    title: Hello, world
    deadline: 2030-06-30 23:55:00
    machine: linux
    statement: https://en.wikipedia.org/wiki/%22Hello,_World!%22_program
    order: 1
  1-hello-kvm:
    title: Hello, world (in a KVM guest)
    deadline: 2030-06-30 23:55:00
    machine: linux-kvm
    statement: https://en.wikipedia.org/wiki/%22Hello,_World!%22_program
    order: 2
  1-hello-docker:
    title: Hello, world (in a Docker container)
    deadline: 2030-06-30 23:55:00
    machine: linux-docker
    statement: https://en.wikipedia.org/wiki/%22Hello,_World!%22_program
    order: 3
  1-hello-vmware:
    title: Hello, world (in a VMware VM)
    deadline: 2030-06-30 23:55:00
    machine: linux-vmware
    statement: https://en.wikipedia.org/wiki/%22Hello,_World!%22_program
    order: 4
EOF
}

setup_tester() {
    say "tester t1 in $tester"
    "$bin/vmchecker-init-course" tester "$tester" --name t1
    cat > "$tester/config.yaml" <<EOF
# The demo tester written by demo/demo.sh.
tester:
  name: t1
  queue: queue
  work: tmpunzip
  done: done
  state: state
  slots: 2
  executor_timeout: 300
  storer_daemon: http://127.0.0.1:$daemon_port/
  metrics_listen: $tester_metrics_listen
machines: {}
EOF
    # The storer logs in as $ssh_user: it writes bundles into queue/, reads done/.
    id "$ssh_user" >/dev/null 2>&1 || useradd --system --home-dir "$tester" --shell /usr/sbin/nologin "$ssh_user"
    usermod -p '*' "$ssh_user"  # no password, but not locked: sshd accepts keys
    chown "$ssh_user:" "$tester/queue"
    chmod 755 "$tester" "$tester/done"
    local d=$tester
    while [ "$d" != / ]; do chmod o+x "$d" 2>/dev/null || true; d=$(dirname "$d"); done
}

setup_sshd() {
    mkdir -p "$sshdir" /run/sshd
    [ -f "$sshdir/host_key" ] || ssh-keygen -q -t ed25519 -N '' -C vmchecker-demo-tester -f "$sshdir/host_key"
    printf 'restrict,command="internal-sftp" %s\n' "$(cat "$course/keys/id_ed25519.pub")" > "$sshdir/authorized_keys"
    chmod 644 "$sshdir/authorized_keys"
    cat > "$sshdir/sshd_config" <<EOF
Port $ssh_port
ListenAddress 127.0.0.1
HostKey $sshdir/host_key
PidFile $sshdir/sshd.pid
AuthorizedKeysFile $sshdir/authorized_keys
UsePAM no
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
AllowUsers $ssh_user
Subsystem sftp internal-sftp
EOF
    echo "[127.0.0.1]:$ssh_port $(cut -d' ' -f1,2 "$sshdir/host_key.pub")" > "$course/keys/known_hosts"
}

setup_web_users() {
    [ -x "$bin/vmchecker-web" ] || return 0
    if [ ! -s "$run/users" ]; then
        printf 'student\n' | "$bin/vmchecker-web" --users "$run/users" --add-user student >/dev/null
        printf 'grader\n' | "$bin/vmchecker-web" --users "$run/users" --add-user grader >/dev/null
    fi
}

wait_graded() {  # wait_graded ASSIGNMENT ACCOUNT: until the current submission is done or error
    local assignment=$1 account=$2 status
    for _ in $(seq 1 240); do
        status=$(cat "$course/repo/$assignment/$account/current/results/grade.vmr" 2>/dev/null | head -c 200)
        case "$status" in saved|queued|running|"") sleep 0.5 ;; *) return 0 ;; esac
    done
    echo "the submission was not graded within 120 s; see $logs/" >&2
    return 1
}

start() {
    mkdir -p "$run" "$logs" "$pids"
    lxc-info -n vmchecker-base >/dev/null 2>&1 || { echo "no LXC base container: run 'make base'" >&2; exit 1; }
    say "the Docker engine, the guest image, and the VMware lab server in $vmware"
    "$top/tools/dockerd.sh" start
    "$top/lxc-resources/docker-image.sh" vmchecker-base
    (cd "$top" && "$bin/python" -m tests.lab.vmware_lab start --dir "$vmware" --vms vmck-demo-1,vmck-demo-2)
    setup_course
    setup_tester
    setup_sshd
    setup_web_users
    say "starting the processes"
    start_bg sshd /usr/sbin/sshd -D -f "$sshdir/sshd_config" -E "$logs/sshd-auth.log"
    start_bg daemon "$bin/vmchecker-storer-daemon" --listen "127.0.0.1:$daemon_port" --state "$run/state" \
        --metrics-listen "$metrics_listen"
    start_bg queue-manager "$bin/vmchecker-queue-manager" "$tester"
    if [ -x "$bin/vmchecker-web" ]; then
        start_bg web "$bin/vmchecker-web" --listen "$web_listen" --users "$run/users" \
            --secret-file "$run/web-secret"
    fi
    for _ in $(seq 1 50); do "$bin/vmchecker-status" demo >/dev/null 2>&1 && break; sleep 0.2; done

    local sample assignment account assignment_account results
    for sample in hello broken; do
        (cd "$here/sample/$sample" && rm -f "$run/$sample.zip" && zip -q "$run/$sample.zip" hello.c Makefile)
    done
    for assignment in 1-hello 1-hello-kvm 1-hello-docker 1-hello-vmware; do
        say "submitting the sample archive for $assignment as 'student'"
        "$bin/vmchecker-submit" --skip-time-checks demo "$assignment" student "$run/hello.zip"
    done
    say "submitting a sample that does not compile for 1-hello as 'newbie' (it must score 0)"
    "$bin/vmchecker-submit" --skip-time-checks demo 1-hello newbie "$run/broken.zip"
    for assignment_account in 1-hello:student 1-hello-kvm:student 1-hello-docker:student 1-hello-vmware:student \
                              1-hello:newbie; do
        assignment=${assignment_account%%:*} account=${assignment_account#*:}
        wait_graded "$assignment" "$account"
        say "results of demo/$assignment/$account"
        results="$course/repo/$assignment/$account/current/results"
        for f in build-stdout build-stderr run-stdout run-stderr vmchecker-stderr grade; do
            [ -s "$results/$f.vmr" ] && { echo "--- $f.vmr"; head -c 2000 "$results/$f.vmr"; echo; }
        done
    done
    say "grades"
    "$bin/vmchecker-grades" demo
    say "the demo keeps running"
    cat <<EOF
  $bin/vmchecker-submit demo 1-hello student ARCHIVE.zip   # ACCOUNT: a student of demo (course.students)
  $bin/vmchecker-status demo
  $bin/vmchecker-grades demo --format json
EOF
    if alive web; then
        echo "  web: http://$web_listen/  (logins: student / student, grader / grader)"
    fi
    echo "  metrics (Prometheus): http://$metrics_listen/metrics (storer daemon)," \
         "http://$tester_metrics_listen/metrics (queue manager t1)"
    echo "  logs in $logs/; stop everything with: make demo-stop"
}

stop() {
    mkdir -p "$pids"
    for name in web queue-manager daemon sshd; do stop_bg "$name"; done
    if [ -d "$vmware" ]; then
        (cd "$top" && "$bin/python" -m tests.lab.vmware_lab stop --dir "$vmware") && echo "VMware lab stopped"
    fi
    echo "demo stopped (its files stay in $run/)"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
