/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The kernel API differences vmemexp.c meets between Linux 6.1 and today.
 * Version guards are this file's purpose, so checkpatch runs on it with
 * --ignore LINUX_VERSION_CODE,CONSTANT_COMPARISON; vmemexp.c needs none.
 *
 * Also relied on, unchanged since 6.1: pin_user_pages_fast(start, int
 * nr_pages, gup_flags, pages), mm->pinned_vm (atomic64_t),
 * user_struct->locked_vm (atomic_long_t), folio_mapping() and shmem_mapping()
 * (an inline before 6.3, exported after), untagged_addr(), struct iosys_map
 * in dma_buf_ops.vmap (5.18), sg_alloc_table_from_pages_segment() (5.15),
 * get_unused_fd_flags()/fd_install(), dma_buf_ops.begin_cpu_access and the
 * dma-buf core calling map_dma_buf/vmap serialised (dmabuf->lock up to 6.1,
 * the reservation lock from 6.2).
 */
#ifndef VMEMEXP_COMPAT_H
#define VMEMEXP_COMPAT_H

#include <linux/mm.h>
#include <linux/module.h>
#include <linux/version.h>

#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 1, 0)
#error "vmemexp needs Linux 6.1 or later"
#endif

/*
 * What changed in the range is found by Kbuild's probes of the kernel's own
 * headers (Kbuild), not by version checks: stable and vendor kernels backport.
 */

/* 6.13 turned symbol namespace names into string literals. */
#ifdef VMEMEXP_IMPORT_NS_BARE
MODULE_IMPORT_NS(DMA_BUF);
#else
MODULE_IMPORT_NS("DMA_BUF");
#endif

/* 6.3 made vm_flags read-only behind vm_flags_set() and friends. */
#ifndef VMEMEXP_HAVE_VM_FLAGS_SET
static inline void vm_flags_set(struct vm_area_struct *vma, vm_flags_t flags)
{
	vma->vm_flags |= flags;
}

static inline void vm_flags_clear(struct vm_area_struct *vma, vm_flags_t flags)
{
	vma->vm_flags &= ~flags;
}
#endif

/*
 * struct user_struct has locked_vm, which every export is charged to, when
 * any of its users is built in (6.1: perf, BPF, networking, io_uring, ...;
 * the list changes between versions, networking and io_uring stay on it).
 */
#if !defined(CONFIG_NET) && !defined(CONFIG_IO_URING)
#error "vmemexp charges user_struct->locked_vm, which needs CONFIG_NET or CONFIG_IO_URING"
#endif

#endif /* VMEMEXP_COMPAT_H */
