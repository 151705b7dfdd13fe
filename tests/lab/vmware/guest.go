package main

import (
	"bufio"
	"bytes"
	"net/url"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/simulator/vpx"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
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
func (g *guest) start(image, label, vmName string, limits []string) error {
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

// ListProcessesInGuestResponse stands in for govmomi's, whose GuestProcessInfo drops an exit
// code 0 (omitempty), which pyvmomi then reads as unset: a real host sends 0. The simulator
// names the response element after this type.
type ListProcessesInGuestResponse struct {
	Returnval []processInfo `xml:"returnval,omitempty"`
}

type processInfo struct {
	Name      string     `xml:"name"`
	Pid       int64      `xml:"pid"`
	Owner     string     `xml:"owner"`
	CmdLine   string     `xml:"cmdLine"`
	StartTime time.Time  `xml:"startTime"`
	EndTime   *time.Time `xml:"endTime"`
	ExitCode  *int32     `xml:"exitCode"` // once it ended
}

type listProcessesBody struct {
	Res    *ListProcessesInGuestResponse
	Fault_ *soap.Fault
}

func (b *listProcessesBody) Fault() *soap.Fault { return b.Fault_ }

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

// The guest managers replace the simulator's empty ones under the same references; the
// simulator finds their methods by name. Each embeds its mo type first, as it requires.

type processManager struct {
	mo.GuestProcessManager
	lab *lab
}

type fileManager struct {
	mo.GuestFileManager
	lab *lab
}

func (l *lab) installGuestManagers() {
	ops := simulator.Map.Get(*vpx.ServiceContent.GuestOperationsManager).(*simulator.GuestOperationsManager)
	files := &fileManager{lab: l}
	files.Self = *ops.FileManager
	processes := &processManager{lab: l}
	processes.Self = *ops.ProcessManager
	simulator.Map.Put(files)
	simulator.Map.Put(processes)
}

// prepare checks what every guest call needs: a user name and a running guest.
func (l *lab) prepare(vm types.ManagedObjectReference, auth types.BaseGuestAuthentication) (*guest, string, *soap.Fault) {
	creds, ok := auth.(*types.NamePasswordAuthentication)
	if !ok || creds.Username == "" {
		return nil, "", simulator.Fault("guest user name missing", new(types.InvalidGuestLogin))
	}
	if simulator.Map.Get(vm) == nil {
		return nil, "", simulator.Fault("", &types.ManagedObjectNotFound{Obj: vm})
	}
	g := l.guestOf(vm)
	if g == nil {
		return nil, "", simulator.Fault("the VM is not running", new(types.GuestOperationsUnavailable))
	}
	return g, creds.Username, nil
}

func (m *processManager) StartProgramInGuest(req *types.StartProgramInGuest) soap.HasFault {
	body := new(methods.StartProgramInGuestBody)
	g, user, f := m.lab.prepare(req.Vm, req.Auth)
	if f == nil {
		pid, err := g.startProgram(user, req.Spec.GetGuestProgramSpec())
		if err != nil {
			f = simulator.Fault("", err)
		} else {
			body.Res = &types.StartProgramInGuestResponse{Returnval: pid}
		}
	}
	body.Fault_ = f
	return body
}

func (m *processManager) ListProcessesInGuest(req *types.ListProcessesInGuest) soap.HasFault {
	body := new(listProcessesBody)
	g, _, f := m.lab.prepare(req.Vm, req.Auth)
	if f == nil {
		body.Res = &ListProcessesInGuestResponse{Returnval: g.listProcesses(req.Pids)}
	}
	body.Fault_ = f
	return body
}

func (m *processManager) TerminateProcessInGuest(req *types.TerminateProcessInGuest) soap.HasFault {
	body := new(methods.TerminateProcessInGuestBody)
	g, _, f := m.lab.prepare(req.Vm, req.Auth)
	if f == nil {
		if err := g.terminate(req.Pid); err != nil {
			f = simulator.Fault("", err)
		} else {
			body.Res = new(types.TerminateProcessInGuestResponse)
		}
	}
	body.Fault_ = f
	return body
}

// fileOp runs a shell script in the guest as the call's user; "$1" is path.
func (m *fileManager) fileOp(vm types.ManagedObjectReference, auth types.BaseGuestAuthentication, path, script string, more ...string) (string, *soap.Fault) {
	g, user, f := m.lab.prepare(vm, auth)
	if f != nil {
		return "", f
	}
	out, err := g.exec(user, path, append([]string{"/bin/sh", "-c", script, "sh", path}, more...)...)
	if err != nil {
		return "", simulator.Fault("", err)
	}
	return out, nil
}

func (m *fileManager) MakeDirectoryInGuest(req *types.MakeDirectoryInGuest) soap.HasFault {
	script := `mkdir -- "$1"`
	if req.CreateParentDirectories {
		script = `if [ -e "$1" ]; then echo "$1: File exists" >&2; exit 1; fi; mkdir -p -- "$1"`
	}
	_, f := m.fileOp(req.Vm, req.Auth, req.DirectoryPath, script)
	body := &methods.MakeDirectoryInGuestBody{Fault_: f}
	if f == nil {
		body.Res = new(types.MakeDirectoryInGuestResponse)
	}
	return body
}

func (m *fileManager) DeleteDirectoryInGuest(req *types.DeleteDirectoryInGuest) soap.HasFault {
	script := `rmdir -- "$1"`
	if req.Recursive {
		script = `if [ ! -d "$1" ]; then ls -d -- "$1" >/dev/null && echo "$1: Not a directory" >&2; exit 1; fi; rm -r -- "$1"`
	}
	_, f := m.fileOp(req.Vm, req.Auth, req.DirectoryPath, script)
	body := &methods.DeleteDirectoryInGuestBody{Fault_: f}
	if f == nil {
		body.Res = new(types.DeleteDirectoryInGuestResponse)
	}
	return body
}

func (m *fileManager) DeleteFileInGuest(req *types.DeleteFileInGuest) soap.HasFault {
	_, f := m.fileOp(req.Vm, req.Auth, req.FilePath, `rm -- "$1"`)
	body := &methods.DeleteFileInGuestBody{Fault_: f}
	if f == nil {
		body.Res = new(types.DeleteFileInGuestResponse)
	}
	return body
}

// transferURL points at the simulator's own /guestFile handler (docker cp into or out of
// the container named by id). Its host is "*", as a real host answers: the client puts in
// the server it connected to.
func transferURL(g *guest, path string) string {
	return (&url.URL{
		Scheme:   "http",
		Host:     "*",
		Path:     "/guestFile/" + strings.TrimPrefix(path, "/"),
		RawQuery: url.Values{"id": {g.name}, "token": {"vmck-lab"}}.Encode(),
	}).String()
}

func (m *fileManager) InitiateFileTransferToGuest(req *types.InitiateFileTransferToGuest) soap.HasFault {
	body := new(methods.InitiateFileTransferToGuestBody)
	// The checks a real host makes at this call: no directory in the way, an existing file
	// only with overwrite, and the parent folder there (the upload does not create it).
	script := `if [ -d "$1" ]; then echo "$1: Is a directory" >&2; exit 1; fi
if [ -e "$1" ] && [ "$2" != true ]; then echo "$1: File exists" >&2; exit 1; fi
if [ ! -d "$(dirname -- "$1")" ]; then echo "$1: No such file or directory" >&2; exit 1; fi`
	_, body.Fault_ = m.fileOp(req.Vm, req.Auth, req.GuestFilePath, script, strconv.FormatBool(req.Overwrite))
	if body.Fault_ == nil {
		g := m.lab.guestOf(req.Vm)
		body.Res = &types.InitiateFileTransferToGuestResponse{Returnval: transferURL(g, req.GuestFilePath)}
	}
	return body
}

func (m *fileManager) InitiateFileTransferFromGuest(req *types.InitiateFileTransferFromGuest) soap.HasFault {
	body := new(methods.InitiateFileTransferFromGuestBody)
	out, f := m.fileOp(req.Vm, req.Auth, req.GuestFilePath, `stat -c '%F|%s|%u|%g|%a|%Y' -- "$1"`)
	if f == nil {
		field := strings.Split(out, "|")
		if len(field) != 6 || !strings.HasPrefix(field[0], "regular") {
			f = simulator.Fault("", &types.NotAFile{FileFault: types.FileFault{File: req.GuestFilePath}})
		} else {
			size, _ := strconv.ParseInt(field[1], 10, 64)
			uid, _ := strconv.ParseInt(field[2], 10, 32)
			gid, _ := strconv.ParseInt(field[3], 10, 32)
			mode, _ := strconv.ParseInt(field[4], 8, 64)
			mtime, _ := strconv.ParseInt(field[5], 10, 64)
			modified := time.Unix(mtime, 0)
			owner, group := int32(uid), int32(gid)
			body.Res = &types.InitiateFileTransferFromGuestResponse{Returnval: types.FileTransferInformation{
				Attributes: &types.GuestPosixFileAttributes{
					GuestFileAttributes: types.GuestFileAttributes{ModificationTime: &modified},
					OwnerId:             &owner, GroupId: &group, Permissions: mode,
				},
				Size: size,
				Url:  transferURL(m.lab.guestOf(req.Vm), req.GuestFilePath),
			}}
		}
	}
	body.Fault_ = f
	return body
}
