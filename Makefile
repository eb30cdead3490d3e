# The two commands: `make lab` (bring up the lab and converge site.yml) and `make test`.
# `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done
export PATH := $(CURDIR)/$(BIN):$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export ANSIBLE_FORCE_COLOR ?= 1

.PHONY: help prereqs setup lab lab-image lab-assets lab-hosts lab-down test test-fast lint pytest molecule clean

help:  ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## (.*)/  make \1\t\2/' | expand -t 22

prereqs:  ## check the system packages both commands need; as root, install the missing ones
	@$(PYTHON) src/myca_ops/lab/prereqs.py

setup: $(STAMP)  ## the control node's .venv with the pinned dependencies (all a deploy needs)

$(STAMP): pyproject.toml requirements.yml
	@$(PYTHON) src/myca_ops/lab/prereqs.py --control-node
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "make setup: installing the pinned control-node dependencies into $(VENV)"
	@$(BIN)/pip install --quiet --disable-pip-version-check -e '.[control]'
	@$(BIN)/python -m myca_ops.setup_collections
	@touch $@

lab-image: prereqs setup  ## start the Docker engine and build the lab's Debian 12 image
	@$(BIN)/python -m myca_ops.lab.image

# The lab's Moshi: a wheelhouse with CPU torch (also installed here, to generate weights
# and run the tests that load moshi) and a tiny generated checkpoint.
LAB := .lab
$(LAB)/wheelhouse.done: $(STAMP) roles/moshi/defaults/main.yml inventory/lab/group_vars/gpu_hosts.yml src/myca_ops/lab/wheelhouse.py
	@$(BIN)/python -m myca_ops.lab.wheelhouse $(LAB)/wheelhouse --install
	@touch $@

lab-assets: lab-image $(LAB)/wheelhouse.done  ## the lab image, the CPU torch wheelhouse and the generated weights
	@$(BIN)/python -m myca_ops.lab.weights $(LAB)/weights

lab-hosts: lab-assets  ## start the lab's three hosts
	$(BIN)/ansible-playbook playbooks/lab.yml

# site.yml in two timed parts: the converge (its plays less verify), then the measurement
# (playbooks/verify.yml, the last play of site.yml).
lab: lab-hosts  ## converge site.yml on the lab, then verify (prints the table and both timings)
	@t0=$$(date +%s) && $(BIN)/ansible-playbook site.yml --skip-tags verify && t1=$$(date +%s) && \
	$(BIN)/ansible-playbook playbooks/verify.yml && t2=$$(date +%s) && \
	echo "make lab: converge $$((t1 - t0)) s, verify $$((t2 - t1)) s"

lab-down: setup  ## remove the lab's hosts
	$(BIN)/ansible-playbook playbooks/lab.yml -e lab_state=absent

lint: setup  ## yamllint, ansible-lint (production profile), ruff, mypy
	$(BIN)/yamllint --strict .
	$(BIN)/ansible-lint --profile production
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The pinned TypeScript compiler the ticket route's test compiles the route with.
TSC := tests/ts/node_modules/.bin/tsc
$(TSC): tests/ts/package.json tests/ts/package-lock.json
	@echo "make: installing the pinned TypeScript compiler into tests/ts (npm ci)"
	@npm ci --prefix tests/ts --no-audit --no-fund --loglevel=error
	@touch $@

# The fast tier: no Docker, no PostgreSQL, no weights (tests marked `lab` are left out).
test-fast: prereqs lint $(TSC)  ## lint, then the tests that need no Docker, PostgreSQL or weights
	$(BIN)/pytest -m "not lab"

# The lab tier: the tests that need weights, moshi, PostgreSQL or Docker.
pytest: lab-assets  ## the lab tier of pytest (weights, moshi, PostgreSQL, Docker)
	$(BIN)/pytest -m lab

# Two scenarios at a time: one mostly waits on a single Ansible process, so two share the two
# cores (docker and nosystemd side by side: 362 s, against 657 s one after the other). Longest
# first, so that the two lanes end together; a scenario not named here joins them, after. `pool` runs
# alone, after the others: its rolling deploy and queue time CPU Moshi on two hosts, and beside
# `default` its callers' audio stalled for over a second. The scenarios' containers, networks and
# ports are their own. Each line says its scenario; after a failure no new scenario starts (the
# one beside it finishes). MOLECULE_JOBS=1 runs them one after the other.
MOLECULE_JOBS ?= 2
LONGEST_FIRST := default docker nosystemd gpu_host
ALONE := pool
ALL_SCENARIOS := $(notdir $(patsubst %/molecule.yml,%,$(wildcard molecule/*/molecule.yml)))
SCENARIOS := $(filter $(ALL_SCENARIOS),$(LONGEST_FIRST) $(ALONE)) $(sort $(filter-out $(LONGEST_FIRST) $(ALONE),$(ALL_SCENARIOS)))
SIDE_BY_SIDE := $(addprefix molecule-,$(filter-out $(ALONE),$(SCENARIOS)))
ONE_AT_A_TIME := $(addprefix molecule-,$(filter $(ALONE),$(SCENARIOS)))
molecule: lab-assets  ## molecule test for every scenario, two at a time (pool alone), each timed
	@$(if $(SIDE_BY_SIDE),$(MAKE) --no-print-directory -j$(MOLECULE_JOBS) $(SIDE_BY_SIDE))
	@$(if $(ONE_AT_A_TIME),$(MAKE) --no-print-directory $(ONE_AT_A_TIME))

molecule-%:
	@set -o pipefail; t0=$$(date +%s); PYTHONUNBUFFERED=1 $(BIN)/molecule test -s $* 2>&1 | sed -u 's/^/[$*] /' && \
	echo "make molecule: $* passed in $$(( $$(date +%s) - t0 )) s"

test:  ## all of it: test-fast, pytest, molecule; ends with each tier's time
	@t0=$$(date +%s) && $(MAKE) --no-print-directory test-fast && t1=$$(date +%s) && \
	$(MAKE) --no-print-directory pytest && t2=$$(date +%s) && \
	$(MAKE) --no-print-directory molecule && t3=$$(date +%s) && \
	echo "make test: fast tier $$((t1 - t0)) s, lab tier $$((t2 - t1)) s, molecule $$((t3 - t2)) s"

clean:  ## remove the lab's hosts, the .venv and the lab's assets
	@if [ -x $(BIN)/ansible-playbook ]; then $(BIN)/ansible-playbook playbooks/lab.yml -e lab_state=absent; fi
	rm -rf $(VENV) .lab
