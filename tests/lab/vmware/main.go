// Command vmck-vsphere is the VMware test lab of vmchecker: a vSphere API server (govmomi's
// simulator, which speaks the real SOAP API pyvmomi uses) whose virtual machines are backed
// by Docker containers, so the VMware backend can be tested end to end on one machine.
//
// The simulator alone only pretends: its revert keeps the guest's files and 0.24.2 has no
// guest process calls. This lab adds what the backend needs (see lab.go and guest.go):
//   - power on creates or starts the VM's container (no network, the VM's memory, CPUs and
//     a pids limit), power off stops it; guest.toolsRunningStatus follows;
//   - revert removes the container, so the next power on starts fresh from the snapshot;
//   - a clone starts from its source's current snapshot; destroy removes the container;
//   - StartProgramInGuest, ListProcessesInGuest, TerminateProcessInGuest, MakeDirectoryInGuest,
//     DeleteDirectoryInGuest, DeleteFileInGuest and the file transfer calls reach the container.
//
// It serves plain http (pyvmomi: SmartConnect(protocol="http")): the lab is on loopback only.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/types"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to serve on (port 0 picks a free one)")
	user := flag.String("user", "vmck", "the only user name Login accepts")
	password := flag.String("password", "", "the only password Login accepts (required)")
	vms := flag.String("vms", "", "comma-separated names of the VMs to create, each with one snapshot 'clean'")
	image := flag.String("image", "vmchecker-base:latest", "Docker image the VMs' disks start from")
	label := flag.String("label", "", "KEY=VALUE label put on every container and image the lab makes (required)")
	pids := flag.Int("pids", 512, "pids limit of each VM's container (a VM's process table is finite too)")
	flag.Parse()
	if *password == "" || !strings.Contains(*label, "=") || *vms == "" {
		log.Fatal("-password, -label KEY=VALUE and -vms are required")
	}

	// One datacenter, one cluster of one host, one datastore, no VMs of the model's own.
	model := simulator.VPX()
	model.Host, model.ClusterHost, model.Machine, model.Portgroup = 0, 1, 0, 0
	model.Autostart = false
	if err := model.Create(); err != nil {
		log.Fatal(err)
	}
	defer model.Remove()

	l := newLab(*label, *image, *pids)
	simulator.Map.AddHandler(l)
	l.installGuestManagers()
	defer l.removeAll()

	// Setup goes through the simulator in process, as any API client would.
	ctx := context.Background()
	client, err := vim25.NewClient(ctx, model.Service)
	if err != nil {
		log.Fatal(err)
	}
	for _, name := range strings.Split(*vms, ",") {
		if err := createVM(ctx, client, name); err != nil {
			log.Fatalf("creating VM %s: %s", name, err)
		}
	}

	model.Service.Listen = &url.URL{Host: *listen, User: url.UserPassword(*user, *password)}
	server := model.Service.NewServer()
	defer server.Close()
	// Printed without the credentials that server.URL carries; the driver reads this line.
	fmt.Printf("listening %s://%s/sdk\n", server.URL.Scheme, server.URL.Host)
	// Nothing else goes to stdout: a driver that read the line may close its pipe and leave
	// (a daemonized lab), and a later write would kill the server with SIGPIPE.
	os.Stdout.Close()

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
}

// createVM makes a powered-off VM and its snapshot "clean" (taken off, so a revert leaves
// the VM off, as on a real host).
func createVM(ctx context.Context, c *vim25.Client, name string) error {
	finder := find.NewFinder(c, false)
	dc, err := finder.DefaultDatacenter(ctx)
	if err != nil {
		return err
	}
	finder.SetDatacenter(dc)
	folders, err := dc.Folders(ctx)
	if err != nil {
		return err
	}
	pool, err := finder.DefaultResourcePool(ctx)
	if err != nil {
		return err
	}
	spec := types.VirtualMachineConfigSpec{
		Name:     name,
		GuestId:  string(types.VirtualMachineGuestOsIdentifierOtherLinux64Guest),
		Files:    &types.VirtualMachineFileInfo{VmPathName: "[LocalDS_0]"},
		NumCPUs:  1,
		MemoryMB: 512,
	}
	task, err := folders.VmFolder.CreateVM(ctx, spec, pool, nil)
	if err != nil {
		return err
	}
	info, err := task.WaitForResult(ctx, nil)
	if err != nil {
		return err
	}
	vm := object.NewVirtualMachine(c, info.Result.(types.ManagedObjectReference))
	task, err = vm.CreateSnapshot(ctx, "clean", "the lab's initial state", false, false)
	if err != nil {
		return err
	}
	return task.Wait(ctx)
}
