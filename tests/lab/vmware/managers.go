package main

import (
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/simulator/vpx"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

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
