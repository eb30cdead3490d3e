# The two commands: `make lab` (bring up the lab and converge site.yml) and `make test`.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done
export PATH := $(CURDIR)/$(BIN):$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export ANSIBLE_FORCE_COLOR ?= 1

.PHONY: setup lab lab-image lab-assets lab-hosts lab-down test test-fast lint pytest molecule clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.yml
	@test -x $(BIN)/python || python3 -m venv $(VENV)
	@echo "make setup: installing the pinned control-node dependencies into $(VENV)"
	@$(BIN)/pip install --quiet --disable-pip-version-check -e '.[control]'
	@$(BIN)/python -m myca_ops.setup_collections
	@touch $@

lab-image: setup
	@$(BIN)/python -m myca_ops.lab.image

# The lab's Moshi: a wheelhouse with CPU torch (also installed here, to generate weights
# and run the tests that load moshi) and a tiny generated checkpoint.
LAB := .lab
$(LAB)/wheelhouse.done: $(STAMP) roles/moshi/defaults/main.yml src/myca_ops/lab/wheelhouse.py
	@$(BIN)/python -m myca_ops.lab.wheelhouse $(LAB)/wheelhouse --install
	@touch $@

lab-assets: lab-image $(LAB)/wheelhouse.done
	@$(BIN)/python -m myca_ops.lab.weights $(LAB)/weights

lab-hosts: lab-assets
	$(BIN)/ansible-playbook playbooks/lab.yml

# site.yml in two timed parts: the converge (its plays less verify), then the measurement
# (playbooks/verify.yml, the last play of site.yml).
lab: lab-hosts
	@t0=$$(date +%s) && $(BIN)/ansible-playbook site.yml --skip-tags verify && t1=$$(date +%s) && \
	$(BIN)/ansible-playbook playbooks/verify.yml && t2=$$(date +%s) && \
	echo "make lab: converge $$((t1 - t0)) s, verify $$((t2 - t1)) s"

lab-down: setup
	$(BIN)/ansible-playbook playbooks/lab.yml -e lab_state=absent

lint: setup
	$(BIN)/yamllint --strict .
	$(BIN)/ansible-lint --profile production
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The fast tier: no Docker, no PostgreSQL, no weights (tests marked `lab` are left out).
test-fast: lint
	$(BIN)/pytest -m "not lab"

# The lab tier: the tests that need weights, moshi, PostgreSQL or Docker.
pytest: lab-assets
	$(BIN)/pytest -m lab

molecule: lab-assets
	$(BIN)/molecule test --all

test: test-fast pytest molecule

clean:
	@if [ -x $(BIN)/ansible-playbook ]; then $(BIN)/ansible-playbook playbooks/lab.yml -e lab_state=absent; fi
	rm -rf $(VENV) .lab
