package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
)

// docker runs the docker client and returns its output, or an error carrying what it said
// (docker exec prints some of its own errors, "unable to find user", on stdout).
func docker(args ...string) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.Command("docker", args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		said := strings.TrimSpace(stderr.String() + " " + stdout.String())
		return stdout.String(), fmt.Errorf("docker %s: %v: %s", args[0], err, said)
	}
	return strings.TrimSpace(stdout.String()), nil
}

// removeLabelled removes the containers and images that carry the label.
func removeLabelled(label string) {
	if ids, _ := docker("ps", "-aq", "--filter", "label="+label); ids != "" {
		_, _ = docker(append([]string{"rm", "-f"}, strings.Fields(ids)...)...)
	}
	if ids, _ := docker("images", "-q", "--filter", "label="+label); ids != "" {
		_, _ = docker(append([]string{"rmi", "-f"}, strings.Fields(ids)...)...)
	}
}

// The guest's processes are killed from the host, through /proc, as the guest tools of a
// real VM kill from a daemon that already runs: a guest whose pids limit is exhausted
// (a fork bomb) cannot start the process a "docker exec kill" would need.

// pidNamespace names the pid namespace of a host process ("pid:[4026532...]").
func pidNamespace(pid int) string {
	ns, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", pid))
	return ns
}

// hostPid returns the host's pid of the process guestPid of pid namespace ns.
func hostPid(ns string, guestPid int64) (int, bool) {
	for _, pid := range procPids() {
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(status), "\n") {
			// "NSpid:\t<host pid>\t...\t<pid in the innermost namespace>"
			if f := strings.Fields(line); len(f) > 2 && f[0] == "NSpid:" && f[len(f)-1] == strconv.FormatInt(guestPid, 10) {
				if pidNamespace(pid) == ns {
					return pid, true
				}
			}
		}
	}
	return 0, false
}

func procPids() []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// sessionMembers returns the live (not zombie) host processes of session sid (host view)
// in pid namespace ns (so a host pid reused outside the guest is never touched).
func sessionMembers(ns string, sid int) []int {
	var members []int
	for _, pid := range procPids() {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// After "pid (comm) ": state ppid pgrp session ...; comm may hold spaces.
		f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		if len(f) > 3 && f[0] != "Z" && f[3] == strconv.Itoa(sid) && pidNamespace(pid) == ns {
			members = append(members, pid)
		}
	}
	return members
}

// killSession SIGKILLs every process of session sid of pid namespace ns until none is left (a process forking
// while it is killed can leave a child for the next round). Each docker exec process leads
// its own session, so this is the process and all its children that did not leave it.
func killSession(ns string, sid int) {
	for round := 0; round < 1000; round++ {
		members := sessionMembers(ns, sid)
		if len(members) == 0 {
			return
		}
		for _, pid := range members {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}
