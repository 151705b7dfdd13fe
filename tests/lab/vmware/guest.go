package main

import (
	"bufio"
	"bytes"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vmware/govmomi/vim25/types"
)

// guest is the container behind one VM: created at its first power on, removed by a
// revert or a destroy.
type guest struct {
	name string // the container's name

	mu      sync.Mutex
	exists  bool
	running bool
	ns      string   // pid namespace of the container, to find its processes from the host
	limits  []string // docker run flags of memory, CPUs and pids the container has
	procs   map[int64]*process
}

// process is one program started by StartProgramInGuest; its exit code stays listed.
type process struct {
	info types.GuestProcessInfo
	sid  int // its host pid, which is also its session's id (docker exec makes a session)
}

func (g *guest) isRunning() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.running
}

// start creates the container from image (once) or starts the existing one with the
// limits the VM has now (a reconfigure takes effect at the next power on, as on a VM).
func (g *guest) start(image, label string, limits []string) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.exists {
		args := append([]string{"run", "-d", "--name", g.name, "--label", label, "--network", "none",
			"--stop-timeout", "1"}, limits...)
		if _, err := docker(append(args, image)...); err != nil {
			_, _ = docker("rm", "-f", g.name) // a container created but not started
			return err
		}
		g.exists, g.procs = true, map[int64]*process{}
	} else {
		if strings.Join(limits, " ") != strings.Join(g.limits, " ") {
			if _, err := docker(append(append([]string{"update"}, limits...), g.name)...); err != nil {
				return err
			}
		}
		if _, err := docker("start", g.name); err != nil {
			return err
		}
	}
	g.limits = limits
	pid, err := docker("inspect", "--format", "{{.State.Pid}}", g.name)
	if err != nil {
		return err
	}
	init, _ := strconv.Atoi(pid)
	g.ns, g.running = pidNamespace(init), true
	return nil
}

func (g *guest) stop() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.running {
		_, _ = docker("stop", g.name)
		g.running = false
	}
}

func (g *guest) remove() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.exists {
		_, _ = docker("rm", "-f", g.name)
		g.exists, g.running, g.procs = false, false, nil
	}
}

// commit saves the container's files as an image carrying the lab's label.
func (g *guest) commit(label string) (string, error) {
	return docker("commit", "--change", "LABEL "+label, g.name)
}

// exec runs argv in the guest as user; a failure becomes the fault the real API raises.
func (g *guest) exec(user, path string, argv ...string) (string, types.BaseMethodFault) {
	out, err := docker(append([]string{"exec", "-u", user, g.name}, argv...)...)
	if err != nil {
		return "", fault(err.Error(), path)
	}
	return out, nil
}

func fault(stderr, path string) types.BaseMethodFault {
	file := types.FileFault{File: path}
	switch {
	case strings.Contains(stderr, "unable to find user"):
		return new(types.InvalidGuestLogin)
	case strings.Contains(stderr, "is not running"):
		return new(types.GuestOperationsUnavailable)
	case strings.Contains(stderr, "No such file"):
		return &types.FileNotFound{FileFault: file}
	case strings.Contains(stderr, "File exists"):
		return &types.FileAlreadyExists{FileFault: file}
	case strings.Contains(stderr, "Directory not empty"):
		return &types.DirectoryNotEmpty{FileFault: file}
	case strings.Contains(stderr, "Is a directory"), strings.Contains(stderr, "Not a directory"):
		return &types.NotAFile{FileFault: file}
	case strings.Contains(stderr, "Permission denied"):
		return new(types.GuestPermissionDenied)
	}
	return &types.SystemError{Reason: stderr}
}

// launcher runs "programPath arguments" as a Linux guest's tools do (/bin/sh -c), in the
// working directory (default: home), after printing its pid; output goes nowhere, as there.
const launcher = `cd "${1:-${HOME:-/}}" 2>/dev/null || { echo nodir; exit 1; }
echo $$
exec /bin/sh -c "$2" </dev/null >/dev/null 2>&1`

func (g *guest) startProgram(user string, spec *types.GuestProgramSpec) (int64, types.BaseMethodFault) {
	cmdline := strings.TrimSpace(spec.ProgramPath + " " + spec.Arguments)
	args := []string{"exec", "-u", user}
	for _, env := range spec.EnvVariables {
		args = append(args, "-e", env)
	}
	args = append(args, g.name, "/bin/sh", "-c", launcher, "sh", spec.WorkingDirectory, cmdline)
	cmd := exec.Command("docker", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err == nil {
		err = cmd.Start()
	}
	if err != nil {
		return 0, &types.SystemError{Reason: err.Error()}
	}
	line, _ := bufio.NewReader(stdout).ReadString('\n')
	pid, err := strconv.ParseInt(strings.TrimSpace(line), 10, 64)
	if err != nil {
		_ = cmd.Wait()
		if strings.TrimSpace(line) == "nodir" {
			return 0, &types.FileNotFound{FileFault: types.FileFault{File: spec.WorkingDirectory}}
		}
		return 0, fault(line+stderr.String(), spec.ProgramPath) // docker exec says some on stdout
	}
	p := &process{info: types.GuestProcessInfo{
		Name: spec.ProgramPath, Pid: pid, Owner: user, CmdLine: cmdline, StartTime: time.Now(),
	}}
	p.sid, _ = hostPid(g.ns, pid)
	g.mu.Lock()
	if g.procs != nil {
		g.procs[pid] = p
	}
	g.mu.Unlock()
	// The docker exec client ends with the program and returns its exit code.
	go func() {
		_ = cmd.Wait()
		g.mu.Lock()
		defer g.mu.Unlock()
		end := time.Now()
		p.info.EndTime, p.info.ExitCode = &end, int32(cmd.ProcessState.ExitCode())
	}()
	return pid, nil
}

func (g *guest) listProcesses(pids []int64) []processInfo {
	g.mu.Lock()
	defer g.mu.Unlock()
	var list []processInfo
	for pid, p := range g.procs {
		if len(pids) == 0 || containsPid(pids, pid) {
			i := p.info
			info := processInfo{i.Name, i.Pid, i.Owner, i.CmdLine, i.StartTime, i.EndTime, nil}
			if i.EndTime != nil {
				info.ExitCode = &i.ExitCode
			}
			list = append(list, info)
		}
	}
	return list
}

func containsPid(pids []int64, pid int64) bool {
	for _, p := range pids {
		if p == pid {
			return true
		}
	}
	return false
}

// terminate kills the program and every process of its session from the host.
func (g *guest) terminate(pid int64) types.BaseMethodFault {
	g.mu.Lock()
	p, ns := g.procs[pid], g.ns
	finished := p == nil || p.info.EndTime != nil
	g.mu.Unlock()
	if finished {
		return &types.GuestProcessNotFound{Pid: pid}
	}
	if p.sid != 0 {
		killSession(ns, p.sid)
	}
	return nil
}
