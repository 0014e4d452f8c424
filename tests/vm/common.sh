# Shared by the testbed scripts: cache location, logging, the Debian mirror.
# shellcheck shell=bash

VMEM_CACHE=${VMEM_CACHE:-/var/cache/gst-vmem}
VM_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$VM_DIR/../.." && pwd)
VENV="$VMEM_CACHE/venv"
VIRTME_NG_VERSION=1.42
# The kernel matrix: Debian 12's own 6.1 LTS kernel, Debian 13's 6.12 LTS (the default: every
# userland runs its full suite there) and the newest 7.x kernel that Debian testing ships.
KERNELS="6.1 6.12 7"
DEFAULT_KERNEL=6.12
# The userland each kernel's suite runs with (the default kernel runs them all).
kernel_userland() {
    case "$1" in
        6.1) echo 1.22 ;;
        6.12) echo 1.26 ;;
        7) echo 1.28 ;;
        *) die "unknown kernel '$1' (expected one of: $KERNELS)" ;;
    esac
}
# What runs on each extra kernel: --core (the module, its selftest and variants, vm_pinned,
# vmemexport, dmaheap, dmabufsink) or --module (the module, its selftest and variants, and
# vmemexport exporting its own pool through vmemexp: vm_without_udmabuf).
# Debian 12's kernel has neither udmabuf nor dma-heaps (and no way to add them: memfd_fcntl is
# not exported and the heap core is not modular): there vmemexport exports through vmemexp.
kernel_suite() {
    case "$1" in
        6.1) echo --module ;;
        *) echo --core ;;
    esac
}
# How kernel K is had: "built" from Debian's linux-source package with tests/vm/kernel.fragment
# (the default kernel, which must have everything built in, and every K-debug), or "stock":
# Debian's own prebuilt kernel, the one users run, plus the test drivers its config lacks,
# built out of tree from the same version's linux-source (tests/vm/setup stock_kernel).
kernel_kind() {
    case "$1" in
        6.1 | 7) echo stock ;;
        6.12 | *-debug) echo built ;;
        *) die "unknown kernel '$1' (expected one of: $KERNELS)" ;;
    esac
}
# Kernel K -> "SUITE PACKAGE": where a built kernel's source comes from; for a stock kernel, the
# suite whose linux-image-amd64 names it (its source is that version's linux-source package).
# K-debug (make debug-kernel) is K's source with debugging options.
kernel_package() {
    case "${1%-debug}" in
        6.1) echo bookworm linux-image-amd64 ;;
        6.12) echo trixie linux-source-6.12 ;;
        7) echo forky linux-image-amd64 ;;
        *) die "unknown kernel '$1' (expected one of: $KERNELS)" ;;
    esac
}
# Two vivid instances: 0 with vmalloc buffers (takes any dma-buf), 1 with dma-contig buffers
# (like a device without an IOMMU: it can only import physically contiguous memory).
KERNEL_CMDLINE="vivid.n_devs=2 vivid.allocators=0,1"

log() { printf '[vm] %s\n' "$*" >&2; }
die() { printf '[vm] error: %s\n' "$*" >&2; exit 1; }

# The Debian mirror this host already uses, so the testbed fetches from the same place apt does.
debian_mirror() {
    local uri
    uri=$(grep -hE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
        | grep -oE 'https?://[^ ]+/debian/?( |$)' | head -n1 | tr -d ' ')
    echo "${uri:-}"
}

# Userland name -> its root directory ("" = the host's own root, GStreamer 1.22).
userland_root() {
    case "$1" in
        1.22) echo "" ;;
        1.26) echo "$VMEM_CACHE/userland-trixie" ;;
        1.28) echo "$VMEM_CACHE/userland-forky" ;;
        *) die "unknown userland '$1' (expected 1.22, 1.26 or 1.28)" ;;
    esac
}

userland_suite() {
    case "$1" in
        1.26) echo trixie ;;
        1.28) echo forky ;;
        *) die "userland '$1' is the host's own" ;;
    esac
}
