package main

import (
	"log"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// lab follows the simulator's inventory and keeps one container per powered VM in step
// with it. It is a registry handler: the simulator calls UpdateObject for every property
// change (power state, task state) and RemoveObject when an object goes, which lets the
// lab act without changing the simulator's own methods.
type lab struct {
	label, image string // label is KEY=VALUE; image is where a VM's disk starts
	prefix       string // container names start with it (the label's value)
	pids         int

	mu      sync.Mutex
	guests  map[types.ManagedObjectReference]*guest // by VM
	images  map[types.ManagedObjectReference]string // by snapshot or clone: image its disk starts from
	pending map[types.ManagedObjectReference]string // by VM: image of the snapshot being taken
}

func newLab(label, image string, pids int) *lab {
	return &lab{
		label: label, image: image, pids: pids,
		prefix:  dockerName(label[strings.Index(label, "=")+1:]),
		guests:  map[types.ManagedObjectReference]*guest{},
		images:  map[types.ManagedObjectReference]string{},
		pending: map[types.ManagedObjectReference]string{},
	}
}

var invalidName = regexp.MustCompile(`[^a-zA-Z0-9_.-]`)

// dockerName turns a VM name (any text) into a valid part of a container name.
func dockerName(s string) string { return invalidName.ReplaceAllString(s, "-") }

// Reference names the lab as a registry handler (handlers are keyed by reference).
func (l *lab) Reference() types.ManagedObjectReference {
	return types.ManagedObjectReference{Type: "VmckLab", Value: "vmck-lab"}
}

// PutObject gives a snapshot's tasks (revert, remove) their VM as entity, as a real host
// does: the simulator names the snapshot, which pyvmomi refuses to read (not a ManagedEntity).
func (l *lab) PutObject(obj mo.Reference) {
	t, ok := obj.(*simulator.Task)
	if !ok || t.Info.Entity == nil || t.Info.Entity.Type != "VirtualMachineSnapshot" {
		return
	}
	if s, ok := simulator.Map.Get(*t.Info.Entity).(*simulator.VirtualMachineSnapshot); ok {
		vm := s.Vm
		t.Info.Entity = &vm
		if v, ok := simulator.Map.Get(vm).(*simulator.VirtualMachine); ok {
			t.Info.EntityName = v.Name
		}
	}
}

// RemoveObject: a destroyed VM takes its container with it (a removed snapshot's committed
// image stays until the lab stops: a clone may still start from it).
func (l *lab) RemoveObject(ref types.ManagedObjectReference) {
	l.mu.Lock()
	g := l.guests[ref]
	delete(l.guests, ref)
	delete(l.images, ref)
	l.mu.Unlock()
	if g != nil {
		g.remove()
	}
}

func (l *lab) UpdateObject(obj mo.Reference, changes []types.PropertyChange) {
	for _, c := range changes {
		switch o := obj.(type) {
		case *mo.VirtualMachine:
			if c.Name == "runtime.powerState" {
				l.power(o)
			}
		case *mo.Task:
			if c.Name == "info.state" {
				l.task(o)
			}
		}
	}
}

// task acts on the tasks whose effect the simulator does not reach the guest with. It runs
// in the task's own goroutine, so "running" comes before the simulator does its part and
// "success" after.
func (l *lab) task(t *mo.Task) {
	if t.Info.Entity == nil {
		return
	}
	ref := *t.Info.Entity
	switch t.Info.State {
	case types.TaskInfoStateRunning:
		switch t.Info.DescriptionId {
		case "VirtualMachine.revertSnapshot", "VirtualMachineSnapshot.revertToSnapshot":
			l.reset(ref) // the VM, see PutObject
		case "VirtualMachine.createSnapshot":
			image := l.snapshotImage(ref)
			l.mu.Lock()
			l.pending[ref] = image
			l.mu.Unlock()
		}
	case types.TaskInfoStateSuccess:
		result, _ := t.Info.Result.(types.ManagedObjectReference)
		l.mu.Lock()
		defer l.mu.Unlock()
		switch t.Info.DescriptionId {
		case "VirtualMachine.createSnapshot":
			l.images[result] = l.pending[ref]
			delete(l.pending, ref)
		case "VirtualMachine.cloneVm":
			// The lab's clones are linked clones of the source's current snapshot (the
			// simulator's task does not say which snapshot the spec named).
			l.images[result] = l.diskImage(ref)
		}
	}
}

// diskImage is the image a fresh container of the VM starts from: its current snapshot's,
// else the snapshot it was cloned from, else the lab's image. Called with l.mu held.
func (l *lab) diskImage(ref types.ManagedObjectReference) string {
	if vm, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine); ok && vm.Snapshot != nil && vm.Snapshot.CurrentSnapshot != nil {
		if image, ok := l.images[*vm.Snapshot.CurrentSnapshot]; ok {
			return image
		}
	}
	if image, ok := l.images[ref]; ok {
		return image
	}
	return l.image
}

// snapshotImage is what a snapshot taken now holds: the container's files committed to an
// image when the VM has a container, else the disk it would start from.
func (l *lab) snapshotImage(ref types.ManagedObjectReference) string {
	l.mu.Lock()
	g, image := l.guests[ref], l.diskImage(ref)
	l.mu.Unlock()
	if g == nil {
		return image
	}
	committed, err := g.commit(l.label)
	if err != nil {
		log.Printf("snapshot of %s keeps %s: %s", g.name, image, err)
		return image
	}
	return committed
}

// reset makes a revert real: the container goes (its files with it) and the VM is off, as
// after reverting to a snapshot taken powered off.
func (l *lab) reset(ref types.ManagedObjectReference) {
	l.mu.Lock()
	g := l.guests[ref]
	l.mu.Unlock()
	if g != nil {
		g.remove()
	}
	vm, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine)
	if ok && vm.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOff {
		off := types.VirtualMachinePowerStatePoweredOff
		simulator.Map.Update(vm, []types.PropertyChange{
			{Name: "runtime.powerState", Val: off},
			{Name: "summary.runtime.powerState", Val: off},
		})
	}
}

// power starts (creating it if needed) or stops the VM's container to match its power state.
func (l *lab) power(vm *mo.VirtualMachine) {
	on := vm.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOn
	l.mu.Lock()
	g := l.guests[vm.Self]
	if g == nil && on {
		g = &guest{name: l.prefix + "-" + dockerName(vm.Name) + "-" + vm.Self.Value}
		l.guests[vm.Self] = g
	}
	image := l.diskImage(vm.Self)
	l.mu.Unlock()
	if g == nil {
		return
	}
	if on {
		cpus := vm.Config.Hardware.NumCPU
		if max := int32(runtime.NumCPU()); cpus > max {
			cpus = max // docker refuses more CPUs than the host has
		}
		memory := strconv.Itoa(int(vm.Config.Hardware.MemoryMB)) + "m" // swap = memory: none
		limits := []string{
			"--memory", memory, "--memory-swap", memory,
			"--cpus", strconv.Itoa(int(cpus)),
			"--pids-limit", strconv.Itoa(l.pids),
		}
		if err := g.start(image, l.label, limits); err != nil {
			log.Printf("power on %s: %s", vm.Name, err)
			return // tools stay "not running": guest calls fail as on a VM that did not boot
		}
	} else {
		g.stop()
	}
	l.tools(vm.Self, on)
}

// tools publishes whether the guest tools run (the backend waits for guestToolsRunning).
func (l *lab) tools(ref types.ManagedObjectReference, running bool) {
	vm, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine)
	if !ok {
		return
	}
	status, tools, state := types.VirtualMachineToolsRunningStatusGuestToolsNotRunning, types.VirtualMachineToolsStatusToolsNotRunning, "notRunning"
	if running {
		status, tools, state = types.VirtualMachineToolsRunningStatusGuestToolsRunning, types.VirtualMachineToolsStatusToolsOk, "running"
	}
	simulator.Map.Update(vm, []types.PropertyChange{
		{Name: "guest.toolsRunningStatus", Val: string(status)},
		{Name: "guest.toolsStatus", Val: tools},
		{Name: "guest.guestState", Val: state},
		{Name: "summary.guest.toolsRunningStatus", Val: string(status)},
		{Name: "summary.guest.toolsStatus", Val: tools},
	})
}

// guestOf returns the VM's guest while its container runs, else nil.
func (l *lab) guestOf(ref types.ManagedObjectReference) *guest {
	l.mu.Lock()
	defer l.mu.Unlock()
	if g := l.guests[ref]; g != nil && g.isRunning() {
		return g
	}
	return nil
}

// removeAll removes every container and image of the lab's label (at exit).
func (l *lab) removeAll() {
	removeLabelled(l.label)
}
