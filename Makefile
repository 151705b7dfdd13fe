# Two entry points for a fresh Debian machine, as root:  make demo  and  make test.
# Each installs what it needs (Debian packages, .venv/, the LXC base container, the KVM
# guest image) and is safe to run twice.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BASE ?= vmchecker-base
KVM_BASE ?= vmchecker-kvm-base
STAMPS := .stamps

.PHONY: all deps venv base kvm-base docker-base vmware-lab tune-host deb test lint demo demo-stop bench clean

all: venv

$(STAMPS):
	mkdir -p $(STAMPS)

deps: | $(STAMPS)
	tools/install-deps.sh

# The editable install puts the source folder on sys.path through a .pth line (compat),
# not setuptools' import hook, which every process of the venv would load (~18 ms a
# command). The stamp's name says the mode, so a venv installed the other way is
# installed again once.
$(VENV)/.installed-compat: setup.py $(wildcard bin/vmchecker-*) | deps
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[lxc,kvm,vmware,docker,web,test]' --config-settings editable_mode=compat
	touch $@

venv: deps $(VENV)/.installed-compat

base: deps
	lxc-resources/build-base.sh $(BASE)

kvm-base: deps
	kvm-resources/build-image.sh $(KVM_BASE)

# The kernel's cgroup setting that makes LXC's attach cheap (tools/tune-host.sh says why).
tune-host:
	tools/tune-host.sh

# The VMware lab server (tests/lab/vmware: a vSphere API server of ours, built offline).
vmware-lab: deps
	tests/lab/vmware/build.sh

# The LXC base as a Docker image (the Docker backend's, and the VMware lab's guests).
docker-base: base
	lxc-resources/docker-image.sh $(BASE)

# The Debian package build/deb/vmchecker_<version>_all.deb (debhelper, dh-python; offline;
# returns at once when nothing changed). Needs only the build tools, not the whole lab of
# `deps` (it names what is missing). tests/test_deb.py installs it in a container.
deb:
	tools/build-deb.sh

lint: venv
	$(VENV)/bin/ruff check .

test: venv tune-host base kvm-base docker-base vmware-lab lint
	$(VENV)/bin/pytest tests

demo: venv tune-host base kvm-base docker-base vmware-lab
	demo/demo.sh start

demo-stop:
	demo/demo.sh stop

bench: venv tune-host base kvm-base docker-base vmware-lab
	$(VENV)/bin/python bench/executor.py
	$(VENV)/bin/python bench/dispatch.py
	$(VENV)/bin/python bench/commands.py
	$(VENV)/bin/python bench/latency.py
	$(VENV)/bin/python bench/scheduler.py
	$(VENV)/bin/python bench/scheduler_lab.py
	$(VENV)/bin/python bench/hostile.py
	$(VENV)/bin/python bench/chaos.py

clean:
	rm -rf $(VENV) $(STAMPS) *.egg-info build/deb
