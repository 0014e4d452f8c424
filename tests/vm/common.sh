# Shared by the testbed scripts: cache location, logging, the Debian mirror.
# shellcheck shell=bash

VMEM_CACHE=${VMEM_CACHE:-/var/cache/gst-vmem}
VM_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$VM_DIR/../.." && pwd)
VENV="$VMEM_CACHE/venv"
VIRTME_NG_VERSION=1.42
KERNEL_SOURCE_PKG=linux-source-6.12
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
