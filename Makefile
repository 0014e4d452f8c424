# gst-vmem. `make test` is THE test command: on a fresh Debian 12 machine (as root) it installs
# what is missing, builds, runs the host tests and the VM suite on GStreamer 1.22, 1.26 and 1.28
# (kernel 6.12), and the kernel matrix's suites on 6.1 and 7.2 (tests/vm/setup all builds the
# kernels, the module and its broken variants).

USERLANDS ?= 1.22 1.26 1.28
# The userland of make demo / make bench: 1.22, 1.26 or 1.28.
USERLAND ?= 1.26
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: all build docs setup lint checkpatch module host-test meson-check deb dkms-check vm-tests vm-test vm-ready test bench soak pipewire demo debug-kernel clean

all: build

setup:
	tests/vm/setup all

build:
	$(CARGO) build --release

# docs/reference.md from the plugin itself (every element and allocator, their properties);
# tests/reference.rs fails in make test when the checked-in file is stale.
docs:
	VMEM_WRITE_REFERENCE=1 $(CARGO) test --test reference
	@git diff --stat -- docs/reference.md

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# vmemexp/ is kernel code: kernel coding style, by the kernel's checkpatch.pl (from the testbed's
# kernel source). compat.h holds the LINUX_VERSION_CODE guards by design; the selftest's ASSERT
# returns from the test like kselftest_harness.h's do.
CHECKPATCH = perl $$(tests/vm/setup kernel-source)/scripts/checkpatch.pl --no-tree -q -f
checkpatch:
	$(CHECKPATCH) vmemexp/vmemexp.c vmemexp/include/uapi/linux/vmemexp.h \
	  vmemexp/selftests/importer/vmemexp_importer.c \
	  vmemexp/selftests/importer/include/uapi/linux/vmemexp_importer.h
	$(CHECKPATCH) --ignore LINUX_VERSION_CODE,CONSTANT_COMPARISON vmemexp/compat.h \
	  vmemexp/selftests/importer/compat.h
	$(CHECKPATCH) --ignore MACRO_WITH_FLOW_CONTROL vmemexp/selftests/vmemexp_test.c
	@echo "checkpatch: vmemexp/ clean"

# vmemexp.ko and the selftest's importer for every kernel of the matrix, without a warning, and
# the selftest, in target/vmemexp/.
module:
	tests/vm/setup module >/dev/null

host-test:
	$(CARGO) test

# The documented meson build installs a loadable plugin (into a scratch prefix here): under
# PREFIX/LIBDIR/gstreamer-1.0, built with cargo's release profile (the default buildtype).
meson-check:
	rm -rf target/meson-prefix
	[ -d target/meson ] || meson setup target/meson --prefix=$(CURDIR)/target/meson-prefix >/dev/null
	meson compile -C target/meson >/dev/null
	meson install -C target/meson >/dev/null
	test -f target/meson/cargo-target/release/libgstvmem.so
	libdir=$$(meson introspect target/meson --buildoptions | python3 -c 'import json, sys; \
	  print(next(o["value"] for o in json.load(sys.stdin) if o["name"] == "libdir"))') && \
	  GST_PLUGIN_PATH=$(CURDIR)/target/meson-prefix/$$libdir/gstreamer-1.0 \
	  gst-inspect-1.0 vmem | grep -q 'vmemexport'
	@echo "meson-check: libgstvmem.so installed under the prefix and loadable"

# Debian packages in target/debian/: gstreamer1.0-vmem (the plugin in GStreamer's multiarch
# plugin directory, docs, the examples' sources; [package.metadata.deb] in Cargo.toml) and
# vmemexp-dkms (the module's DKMS source tree, vmemexp/debian/mkdeb). The VM suite installs the
# plugin's package with dpkg (tests/vm/deb-install).
deb:
	rm -f target/debian/*.deb target/debian/*.ddeb
	$(CARGO) deb --multiarch=same --strip
	vmemexp/debian/mkdeb target/debian

# vmemexp-dkms's source tree, as the package installs it, builds vmemexp.ko the way DKMS does
# (make -C KERNEL M=TREE modules), here against the testbed kernel, without a warning.
KERNEL_SRC ?= $$(tests/vm/setup kernel-source)
KERNEL_OUT ?= $$(k=$$(tests/vm/setup kernel) && echo $${k%/arch/x86/boot/bzImage})
dkms-check: deb
	rm -rf target/dkms-check && mkdir -p target/dkms-check
	dpkg-deb -x target/debian/vmemexp-dkms_*_all.deb target/dkms-check
	tree=$$(echo $(CURDIR)/target/dkms-check/usr/src/vmemexp-*) && \
	  make -s -C $(KERNEL_SRC) O=$(KERNEL_OUT) M=$$tree modules >target/dkms-check/build.log 2>&1 && \
	  ! grep -qiE 'warning|error' target/dkms-check/build.log && test -f $$tree/vmemexp.ko \
	  || { cat target/dkms-check/build.log; exit 1; }
	@echo "dkms-check: vmemexp-dkms's /usr/src tree builds vmemexp.ko"

# Test binaries for the guest: built on the host, listed for tests/vm/suite.
vm-tests: build
	$(CARGO) test --no-run --message-format=json > target/vm-tests.json
	$(CARGO) build -p gst-vmem-bench # the soak driver, which vm_reliability runs briefly
	python3 -c 'import json,sys; [print(m["executable"]) for m in map(json.loads, open(sys.argv[1])) if m.get("reason")=="compiler-artifact" and m.get("executable") and m["profile"]["test"]]' \
	  target/vm-tests.json > target/vm-tests.list
	mkdir -p target/examples-c
	cc -O2 -Wall -Werror examples/c/vmem_pipeline.c -o target/examples-c/vmem_pipeline \
	  $$(pkg-config --cflags --libs gstreamer-1.0 gstreamer-allocators-1.0)

vm-test: vm-tests module deb
	tests/vm/check-all $(USERLANDS)

test:
	tests/vm/setup host
	$(MAKE) lint host-test meson-check vm-tests deb
	tests/vm/setup all
	tests/vm/run-args-test
	$(MAKE) checkpatch dkms-check
	tests/vm/check-all $(USERLANDS)

# The LD_PRELOAD copy counter of the decoder benchmark (bench/memcpy-count), beside bench.
MEMCPY_COUNT = target/release/libmemcpy_count.so
$(MEMCPY_COUNT): bench/memcpy-count/memcpy_count.c
	mkdir -p $(@D)
	cc -O2 -Wall -Wextra -Werror -shared -fPIC -fno-builtin -fno-tree-loop-distribute-patterns \
	  -o $@ $< -ldl

# What make demo, bench and soak need: the testbed for USERLAND and the release build.
vm-ready: $(MEMCPY_COUNT)
	tests/vm/setup host
	tests/vm/setup kernel >/dev/null
	tests/vm/setup userland $(USERLAND)
	$(CARGO) build --release --lib --examples
	$(CARGO) build --release -p gst-vmem-bench

# The main job in one command: the report and results/display.png.
demo: vm-ready
	tests/vm/run --userland $(USERLAND) -- tests/vm/demo

# Benchmarks (figures, never a failure on a number): results/gst-<version>/bench.{json,csv,md};
# then the decoder into a YUV plane on kernel 7.x (vkms takes YUV there) and into GL on 1.28
# (glupload's own udmabuf pool): results/gst-1.28/bench-{yuv,gl}.{json,csv,md}.
bench: vm-ready module
	tests/vm/run --userland $(USERLAND) -- tests/vm/bench $(BENCH_ARGS)
	tests/vm/run --kernel 7 --userland 1.28 -- tests/vm/bench --only yuv $(BENCH_ARGS)
	tests/vm/run --userland 1.28 -- tests/vm/bench --only gl $(BENCH_ARGS)

# Soak and faults (full figures; the VM suite runs a short one): results/gst-<version>/soak.md.
soak: vm-ready
	tests/vm/run --userland $(USERLAND) -- tests/vm/soak $(SOAK_ARGS)

# GStreamer into PipeWire: what pipewiresink does with vmemexport's dma-bufs, with and without
# it (figures, never a failure on a number): results/pipewire/measure.md. The 1.22 userland, the
# host's root, has Debian 12's PipeWire (tests/vm/setup host installs it); the memcpy counter
# (bench/memcpy-count) is built here and preloaded into the producer in the guest.
pipewire: USERLAND = 1.22
pipewire: vm-ready
	cc -O2 -shared -fPIC -fno-builtin -fno-tree-loop-distribute-patterns \
	  -o target/libmemcpy_count.so bench/memcpy-count/memcpy_count.c -ldl
	tests/vm/run --userland 1.22 -- tests/vm/pipewire $(PIPEWIRE_ARGS)

# The module's selftest and stress on a debug build of the testbed kernel (lockdep, DMA API
# debugging, KASAN, ...): outside make test for its build time (19 min) and its runs (the guest
# alone takes 8 min to boot under TCG); results/debug-kernel/. The guest does not see the cache,
# so the kernel's config goes in target/ for the record.
debug-kernel:
	tests/vm/setup host
	tests/vm/setup module 6.12-debug >/dev/null
	k=$$(tests/vm/setup kernel 6.12-debug) && \
	  cp $${k%/arch/x86/boot/bzImage}/.config target/vmemexp/debug-kernel.config && \
	  tests/vm/run --kernel 6.12-debug --memory 3G -- tests/vm/debug-stress target/vmemexp/debug-kernel.config

clean:
	$(CARGO) clean
