#!/usr/bin/env bash
# Starts the Docker engine by hand (no systemd here) when its socket does not answer;
# safe to run twice. The Docker backend, its image and the VMware lab server use it.
#
#   tools/dockerd.sh [start|stop|status]
#
# No bridge and no iptables rules: containers get no network (every vmchecker container
# runs with --network none anyway), and the engine never touches the host's firewall.
set -euo pipefail
SOCK=${DOCKER_SOCK:-/var/run/docker.sock}
LOG=${DOCKERD_LOG:-/var/log/vmchecker-dockerd.log}
PIDFILE=/var/run/docker.pid

answers() { docker -H "unix://$SOCK" version --format '{{.Server.Version}}' >/dev/null 2>&1; }

case ${1:-start} in
  start)
    if answers; then exit 0; fi
    command -v dockerd >/dev/null || { echo "dockerd.sh: dockerd is missing (apt-get install docker.io)" >&2; exit 1; }
    # A dockerd killed uncleanly leaves its pid file; a live one we cannot reach is an error.
    if [[ -f $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
      echo "dockerd.sh: dockerd (pid $(cat "$PIDFILE")) runs but $SOCK does not answer; see $LOG" >&2; exit 1
    fi
    rm -f "$PIDFILE"
    setsid dockerd -H "unix://$SOCK" --bridge=none --iptables=false --ip-masq=false \
      --pidfile "$PIDFILE" >>"$LOG" 2>&1 < /dev/null &
    for _ in $(seq 300); do answers && exit 0; sleep 0.1; done
    echo "dockerd.sh: dockerd did not answer on $SOCK within 30 s; its log: $LOG" >&2
    tail -5 "$LOG" >&2
    exit 1
    ;;
  stop)
    [[ -f $PIDFILE ]] && kill "$(cat "$PIDFILE")" 2>/dev/null || true
    ;;
  status)
    answers && echo "dockerd answers on $SOCK" || { echo "dockerd does not answer on $SOCK"; exit 1; }
    ;;
  -h|--help)
    sed -n '2,8p' "$0" | sed 's/^# \?//'
    ;;
  *)
    echo "usage: tools/dockerd.sh [start|stop|status]" >&2; exit 2
    ;;
esac
