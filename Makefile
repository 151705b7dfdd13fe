# Two entry points for a fresh Debian machine, as root:  make demo  and  make test.
# Each installs what it needs (Debian packages, .venv/, the LXC base container) and is
# safe to run twice.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BASE ?= vmchecker-base
STAMPS := .stamps

.PHONY: all deps venv base test lint demo demo-stop bench clean

all: venv

$(STAMPS):
	mkdir -p $(STAMPS)

deps: | $(STAMPS)
	tools/install-deps.sh

$(VENV)/.installed: setup.py | deps
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[lxc,web,test]'
	touch $@

venv: deps $(VENV)/.installed

base: deps
	lxc-resources/build-base.sh $(BASE)

lint: venv
	$(VENV)/bin/ruff check .

test: venv base lint
	$(VENV)/bin/pytest tests

demo: venv base
	demo/demo.sh start

demo-stop:
	demo/demo.sh stop

bench: venv base
	$(VENV)/bin/python bench/executor.py

clean:
	rm -rf $(VENV) $(STAMPS) *.egg-info
