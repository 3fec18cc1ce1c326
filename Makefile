# vfio-hil: `make run` runs the conformance suite on the virtual rack; `make test` runs the
# project's own tests. Both install what they need (Debian packages, a venv) and reuse it.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The Allure 3 report generator (npm, pinned by package.json and its lock; needs Node.js 20+).
ALLURE_DIR := tools/allure
ALLURE_STAMP := $(ALLURE_DIR)/node_modules/.installed
# Debian packages the virtual rack needs on the controller. The guests boot the controller's
# own filesystem, so their sshd, python3-cffi and fio (the kernel-driver side of the PERF
# near-native ratio) come from here too. WeasyPrint prints the certification report's PDF
# with Pango and a font. A rack kernel built from Debian's kernel source
# (`vm_kernel: build:linux-source-6.12`) needs a compiler and the kernel's build tools
# (vfio_hil.lab.kernel_build.BUILD_PACKAGES).
DEB_PACKAGES := qemu-system-x86 busybox-static openssh-client openssh-server kmod \
	python3-cffi iproute2 pciutils fio \
	libpango-1.0-0 libpangoft2-1.0-0 fonts-dejavu-core \
	bc bison flex gcc make libc6-dev libelf-dev libssl-dev xz-utils
# Debian packages only the project's own tests need: the results store's tests start a
# PostgreSQL server of their own (initdb + pg_ctl) and open the dashboard in headless
# Chromium; the certification report's tests look at its PDF through poppler (pdftoppm,
# pdftotext, pdfinfo). `make run` does not need them.
TEST_DEB_PACKAGES := postgresql chromium poppler-utils

.PHONY: run test unit e2e lint deps test-deps system-deps test-system-deps rack-up rack-down clean

run: deps
	$(BIN)/vfio-hil run $(ARGS)

# Lint, then the unit tests (no VM), then the end-to-end tests on the virtual rack.
test: test-deps
	$(BIN)/ruff check lib fixtures conformance tests
	$(BIN)/pytest tests/unit -q
	$(BIN)/pytest tests/e2e -q

unit: test-deps
	$(BIN)/pytest tests/unit -q

e2e: deps
	$(BIN)/pytest tests/e2e -q

lint: deps
	$(BIN)/ruff check lib fixtures conformance tests

rack-up: deps
	$(BIN)/vfio-hil rack up

rack-down: deps
	$(BIN)/vfio-hil rack down

deps: system-deps $(VENV)/.installed $(ALLURE_STAMP)

test-deps: deps test-system-deps

# Installs only what is missing from a list of Debian packages: a second run does no apt work.
define install_debs
	@missing=$$(dpkg-query -W -f='$${Package} $${Status}\n' $(1) 2>/dev/null \
		| awk '$$4 != "installed" {print $$1}'; \
		for p in $(1); do dpkg-query -W $$p >/dev/null 2>&1 || echo $$p; done); \
	missing=$$(echo $$missing | tr ' ' '\n' | sort -u | tr '\n' ' '); \
	if [ -n "$${missing// }" ]; then \
		echo "installing Debian packages: $$missing"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -q && apt-get install -y -q --no-install-recommends $$missing; \
	fi
endef

system-deps:
	$(call install_debs,$(DEB_PACKAGES))

test-system-deps:
	$(call install_debs,$(TEST_DEB_PACKAGES))

$(VENV)/.installed: pyproject.toml setup.py lib/vfio_hil/core/perf/hotpath.c lib/vfio_hil/core/perf/hotpath_build.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $@

# `npm ci` where Node.js 20 or newer is there; otherwise one line saying what to install (only
# `vfio-hil report allure` needs it, and it installs the same way on first use).
$(ALLURE_STAMP): $(ALLURE_DIR)/package.json $(ALLURE_DIR)/package-lock.json $(VENV)/.installed
	$(BIN)/python -m vfio_hil.lab.allure_report

clean:
	rm -rf $(VENV) build *.egg-info lib/*.egg-info $(ALLURE_DIR)/node_modules

# DMA map+unmap rates through the core library against the same ioctls in a C loop, measured
# on a virtual rack DUT (benchmarks/); prints figures, judges nothing.
.PHONY: bench
bench: deps
	$(BIN)/python benchmarks/run_on_rack.py $(ARGS)
