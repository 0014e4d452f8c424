# Shared by the testbed scripts: cache location, logging, the Debian mirror.
# shellcheck shell=bash

VMEM_CACHE=${VMEM_CACHE:-/var/cache/gst-vmem}
VM_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$VM_DIR/../.." && pwd)
VENV="$VMEM_CACHE/venv"
VIRTME_NG_VERSION=1.42
# The kernel matrix: Debian 12's 6.1 LTS, Debian 13's 6.12 LTS (the default: every userland runs
# its full suite there) and the newest 7.x that Debian testing packages. Each is built from
# Debian's own linux-source package with the same config fragment.
KERNELS="6.1 6.12 7"
DEFAULT_KERNEL=6.12
# The userland each kernel's core suite runs with (the default kernel runs them all).
kernel_userland() {
    case "$1" in
        6.1) echo 1.22 ;;
        6.12) echo 1.26 ;;
        7) echo 1.28 ;;
        *) die "unknown kernel '$1' (expected one of: $KERNELS)" ;;
    esac
}
# What runs on each extra kernel: --core (the module, its selftest and variants, vm_pinned,
# vmemexport, dmaheap, dmabufsink) or --module (the module, its selftest and variants only).
# On 6.1 the V4L2 test drivers refuse to import udmabuf exports ("Failed to process frame",
# vicodec and vivid; 6.12 and 7.2 import them), which fails every V4L2 case of the core suite
# there: until that is understood, 6.1 runs the module's part.
kernel_suite() {
    case "$1" in
        6.1) echo --module ;;
        *) echo --core ;;
    esac
}
# Kernel K -> "SUITE PACKAGE": where its source comes from ("newest": the newest linux-source-7.*).
# K-debug (make debug-kernel) is K's source with debugging options.
kernel_package() {
    case "${1%-debug}" in
        6.1) echo bookworm linux-source-6.1 ;;
        6.12) echo trixie linux-source-6.12 ;;
        7) echo forky newest ;;
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
