# The two commands of the quick start are `make demo` and `make test`; both install
# what they need first (Debian 12 packages, as root or through sudo).
#
#   make demo                 build Release, run an example array job on a temp data dir
#   make test                 build and run every test: native, aarch64 under qemu, armhf,
#                             the Debian packages (make deb-test), and make vm-test when the
#                             VM image is cached
#   make cross-test ARCH=aarch64|armhf   cross-build and run the unit tests under qemu
#   make bench                build and run the scheduler benchmarks
#   make asan                 the native suite under AddressSanitizer + UBSan
#   make lint                 clang-tidy-16 (.clang-tidy) over the production sources; fails
#                             on any finding
#   make fuzz                 build the libFuzzer targets with clang 16 and run each for
#                             FUZZ_SECONDS on a copy of its seed corpus (tests/fuzz/)
#   make deb ARCH=amd64|arm64|armhf   build/deb/cardnode_VERSION_ARCH.deb (deploy/deb/);
#                             VERSION (default: CMakeLists.txt's) and DEB_REVISION (default 1)
#   make deb-test             the amd64 package: lintian, contents, and install / upgrade /
#                             remove / purge in a throwaway overlay of this machine
#                             (tests/deb_test.sh); arm64 and armhf: lintian and contents
#   make vm-test              the arm64 package on a real arm64 kernel with systemd, in a VM
#                             (tests/vm/; make vm-image builds and caches the VM once)

BUILD      ?= build
JOBS       ?= $(shell nproc)
ARCH       ?= aarch64
CMAKE_GEN  := -G Ninja
FUZZ_SECONDS ?= 15
FUZZ_TARGETS := fuzz_frame fuzz_handshake fuzz_channel fuzz_request fuzz_wal_record fuzz_job_json
SUDO       := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# prometheus: its server and promtool for tests/e2e_prometheus_test.cc, which runs its own
# instance on a free loopback port (the package's system service, when systemd starts it, is
# neither used nor in the way).
# chromium: tests/e2e_status_test.cc loads the server's status page in headless chromium
# (--dump-dom) to check it in a real browser's parser, hostile job names and log lines included;
# that test fails, rather than skips, without it.
DEPS := build-essential cmake ninja-build pkg-config \
        libuv1-dev liburing-dev libprotobuf-dev protobuf-compiler \
        libssl-dev zlib1g-dev libgtest-dev libgmock-dev libbenchmark-dev libcli11-dev \
        nlohmann-json3-dev iproute2 util-linux clang-16 libclang-rt-16-dev prometheus chromium
# qemu-user-static, not qemu-user-binfmt (they conflict; the static one provides the other):
# its binfmt entries carry the F flag, which the arm64 VM image build (make vm-test) needs to
# run ARM programs inside a chroot, and they serve the cross tests' task spawns just the same.
CROSS_DEPS := crossbuild-essential-arm64 crossbuild-essential-armhf qemu-user qemu-user-static mmdebstrap
# make deb: lintian checks every package built; dpkg-dev's dpkg-shlibdeps checks
# deploy/deb/deps.map in make deb-test; man-db renders the man page for lintian's check.
DEB_DEPS := lintian dpkg-dev man-db

# $(call install_missing,PACKAGES): installs those of PACKAGES not installed yet, so a
# second run costs one dpkg query per package.
install_missing = @missing=$$(for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing:" $$missing; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

.PHONY: all deps cross-deps deb-deps build demo test test-native cross-build cross-test bench asan lint \
        fuzz deb deb-test vm-deps vm-image vm-test clean

all: build

deps:
	$(call install_missing,$(DEPS))

cross-deps:
	$(call install_missing,$(CROSS_DEPS))

deb-deps:
	$(call install_missing,$(DEB_DEPS))

build: deps
	cmake -S . -B $(BUILD)/release $(CMAKE_GEN) -DCMAKE_BUILD_TYPE=Release
	cmake --build $(BUILD)/release -j $(JOBS)

demo: build
	deploy/demo.sh $(BUILD)/release/cli/cardnode

test-native: build
	cd $(BUILD)/release && ctest -j $(JOBS) --output-on-failure --timeout 300

# make test = the native suite, the fuzz targets for FUZZ_SECONDS each, the aarch64 unit
# tests under qemu-aarch64, and the armhf build with its unit tests under qemu-arm.
# Last, the packages: amd64 from the native build, arm64 and armhf from the cross builds
# just tested (ninja finds them up to date), so deb-test adds packaging and lintian, no build.
test: test-native cross-deps
	$(MAKE) fuzz
	cross/cross.sh aarch64 test
	cross/cross.sh armhf test
	$(MAKE) deb-test
	@if VM_DIR=$(VM_DIR) tests/vm/vm-test.sh --have-image; then $(MAKE) vm-test; else \
	  echo "vm-test: skipped: no cached arm64 VM image in $(VM_DIR) (make vm-image builds one, 13-33 min)"; fi

cross-build: deps cross-deps
	cross/cross.sh $(ARCH) build

cross-test: deps cross-deps
	cross/cross.sh $(ARCH) test

bench: build
	$(BUILD)/release/bench/scheduler_bench

asan: deps
	cmake -S . -B $(BUILD)/asan $(CMAKE_GEN) -DCMAKE_BUILD_TYPE=Debug \
	  -DCARDNODE_SANITIZE=address,undefined -DCARDNODE_BUILD_BENCH=OFF
	cmake --build $(BUILD)/asan -j $(JOBS)
	cd $(BUILD)/asan && ctest -j $(JOBS) --output-on-failure --timeout 300

# clang 16 needs two flags for libstdc++ 12's <expected> (../shared/notes/clang.md) and the
# C++23 spelling it knows. Any finding fails it (WarningsAsErrors in .clang-tidy), and so
# does a clang-tidy crash; .ci/run runs it after `make test`. Tests (*_test.cc) are not linted.
# The directories linted (a regex alternation), e.g. LINT_DIRS='proto|storage|runtime'.
LINT_DIRS ?= proto|storage|net|scheduler|runtime|cli
TIDY_FLAGS := -extra-arg=-std=c++2b -extra-arg=-U__cpp_concepts \
              -extra-arg=-D__cpp_concepts=202002L -extra-arg=-Wno-unknown-warning-option
lint: deps
	@dpkg -s clang-tidy-16 >/dev/null 2>&1 || \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq clang-tidy-16
	cmake -S . -B $(BUILD)/release $(CMAKE_GEN) -DCMAKE_BUILD_TYPE=Release \
	  -DCMAKE_EXPORT_COMPILE_COMMANDS=ON
	cmake --build $(BUILD)/release -j $(JOBS) --target cardnode_proto  # the generated headers
	run-clang-tidy-16 -p $(BUILD)/release -j $(JOBS) -quiet $(TIDY_FLAGS) \
	  '^$(CURDIR)/($(LINT_DIRS))/(?!.*_test\.cc).*\.cc$$'

# libFuzzer targets (tests/fuzz/README.md): a clang-16 build of just the code they feed,
# each run on a temporary copy of its seed corpus, so the repo is not changed. A crash
# fails the target; its input is kept in $(BUILD)/fuzz/artifacts/.
fuzz: deps
	CC=clang-16 CXX=clang++-16 cmake -S . -B $(BUILD)/fuzz $(CMAKE_GEN) \
	  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCARDNODE_FUZZ=ON
	cmake --build $(BUILD)/fuzz -j $(JOBS) --target $(FUZZ_TARGETS)
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; fail=0; \
	mkdir -p $(BUILD)/fuzz/artifacts; \
	for t in $(FUZZ_TARGETS); do \
	  cp -r tests/fuzz/corpus/$$t $$tmp/$$t; \
	  if $(BUILD)/fuzz/tests/fuzz/$$t -max_total_time=$(FUZZ_SECONDS) \
	       -artifact_prefix=$(BUILD)/fuzz/artifacts/$$t- $$tmp/$$t > $$tmp/$$t.log 2>&1; then \
	    echo "fuzz: $$t ok: $$(grep -E '^#[0-9]+' $$tmp/$$t.log | tail -n 1)"; \
	  else \
	    tail -n 40 $$tmp/$$t.log; echo "fuzz: $$t FAILED (input in $(BUILD)/fuzz/artifacts/)"; fail=1; \
	  fi; \
	done; exit $$fail

# Debian packages (deploy/deb/build-deb.sh). ARCH takes Debian's names (amd64, arm64,
# armhf; aarch64 means arm64); without ARCH on the command line, this machine's. The binary
# comes from the usual build dir: build/release for amd64 (only its cardnode target is
# built here), build/cross-aarch64 or build/cross-armhf for the boards (cross/cross.sh,
# cardnode target only). DEB_BINARY=FILE packages a binary built elsewhere instead. The man
# page comes from the packaged binary's --help, run through qemu-user for ARM.
VERSION      ?= $(shell sed -n 's/^project.cardnode VERSION \([0-9.]*\).*/\1/p' CMakeLists.txt)
DEB_REVISION ?= 1
DEB_OUT      ?= $(BUILD)/deb
DEB_ARCH     := $(if $(filter command line environment,$(origin ARCH)),$(patsubst aarch64,arm64,$(ARCH)),$(shell dpkg --print-architecture))
HOST_ARCH    := $(shell dpkg --print-architecture)
DEB_CROSS_amd64 :=
DEB_CROSS_arm64 := aarch64
DEB_CROSS_armhf := armhf
DEB_TRIPLET_aarch64 := aarch64-linux-gnu
DEB_TRIPLET_armhf   := arm-linux-gnueabihf
DEB_QEMU_aarch64    := qemu-aarch64
DEB_QEMU_armhf      := qemu-arm
deb: deb-deps
	@case "$(DEB_ARCH)" in amd64|arm64|armhf) ;; \
	  *) echo "make deb: ARCH=$(DEB_ARCH): expected amd64, arm64 or armhf" >&2; exit 2 ;; esac
ifeq ($(DEB_ARCH),$(HOST_ARCH))
	$(if $(DEB_BINARY),,$(MAKE) deps && \
	  cmake -S . -B $(BUILD)/release $(CMAKE_GEN) -DCMAKE_BUILD_TYPE=Release && \
	  cmake --build $(BUILD)/release -j $(JOBS) --target cardnode)
	deploy/deb/build-deb.sh $(DEB_ARCH) $(or $(DEB_BINARY),$(BUILD)/release/cli/cardnode) \
	  $(VERSION)-$(DEB_REVISION) $(DEB_OUT)
else
	$(MAKE) cross-deps
	$(if $(DEB_BINARY),,$(MAKE) deps && \
	  CARDNODE_BUILD_TARGETS=cardnode cross/cross.sh $(DEB_CROSS_$(DEB_ARCH)) build)
	STRIP=$(DEB_TRIPLET_$(DEB_CROSS_$(DEB_ARCH)))-strip deploy/deb/build-deb.sh $(DEB_ARCH) \
	  $(or $(DEB_BINARY),$(BUILD)/cross-$(DEB_CROSS_$(DEB_ARCH))/cli/cardnode) \
	  $(VERSION)-$(DEB_REVISION) $(DEB_OUT) \
	  $(DEB_QEMU_$(DEB_CROSS_$(DEB_ARCH))) -L $(BUILD)/sysroot-$(DEB_CROSS_$(DEB_ARCH))
endif

# The upgrade twin: the same tree with a higher revision, in its own directory.
deb-test:
	$(MAKE) deb ARCH=$(HOST_ARCH)
	$(MAKE) deb ARCH=$(HOST_ARCH) DEB_REVISION=$(DEB_REVISION)+upgradetest DEB_OUT=$(BUILD)/deb-test
	$(MAKE) deb ARCH=arm64
	$(MAKE) deb ARCH=armhf
	tests/deb_test.sh $(DEB_OUT)/cardnode_$(VERSION)-$(DEB_REVISION)_$(HOST_ARCH).deb \
	  $(BUILD)/deb-test/cardnode_$(VERSION)-$(DEB_REVISION)+upgradetest_$(HOST_ARCH).deb \
	  $(DEB_OUT)/cardnode_$(VERSION)-$(DEB_REVISION)_arm64.deb \
	  $(DEB_OUT)/cardnode_$(VERSION)-$(DEB_REVISION)_armhf.deb

# A real arm64 kernel (tests/vm/): Debian 12 arm64 under qemu-system-aarch64, with systemd,
# cgroup v2 controllers and io_uring. vm-image builds the image once into VM_DIR (outside
# the checkout, so clones share it; 13-33 min, from Debian's mirror). vm-test installs the
# arm64 package there and checks the units, limits, stop and kill -9 against it, then runs
# the cross-built unit tests that need a real kernel; it builds the image first if missing.
# `make test` runs vm-test when the image is cached.
VM_DIR  ?= /var/cache/cardnode/arm64vm
VM_DEPS := qemu-system-arm qemu-user-static binfmt-support mmdebstrap e2fsprogs
vm-deps:
	$(call install_missing,$(VM_DEPS))

vm-image: vm-deps
	$(SUDO) tests/vm/build-image.sh $(VM_DIR)

vm-test: deps cross-deps vm-deps
	cross/cross.sh aarch64 build
	$(MAKE) deb ARCH=arm64
	$(MAKE) deb ARCH=arm64 DEB_REVISION=$(DEB_REVISION)+upgradetest DEB_OUT=$(BUILD)/deb/upgrade
	$(SUDO) env VM_DIR=$(VM_DIR) $(if $(VM_TIMEOUT_S),VM_TIMEOUT_S=$(VM_TIMEOUT_S)) tests/vm/vm-test.sh \
	  $(DEB_OUT)/cardnode_$(VERSION)-$(DEB_REVISION)_arm64.deb \
	  $(BUILD)/deb/upgrade/cardnode_$(VERSION)-$(DEB_REVISION)+upgradetest_arm64.deb

clean:
	rm -rf $(BUILD)
