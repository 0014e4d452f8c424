/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * vmemexp: export page-aligned memory of the calling process as a dma-buf.
 *
 * Open /dev/vmemexp for writing, fill struct vmemexp_export and call
 * VMEMEXP_IOC_EXPORT: on success @fd is a new dma-buf file descriptor (always
 * O_CLOEXEC) whose pages are the caller's pages in [@addr, @addr + @len),
 * pinned until the last reference to the dma-buf is dropped.
 *
 * The range must be mapped readable and writable, by anonymous memory
 * (private file mappings included: their private copy is exported), shmem
 * (memfd, tmpfs, shared anonymous) or hugetlb memory, whatever the export's
 * flags: every export is pinned for write. Errors: EBADF (device not open for
 * writing), EINVAL, EOVERFLOW, E2BIG (max_size_mb), EFAULT (a hole),
 * EACCES (not read-write), EOPNOTSUPP (device memory, or page cache of a
 * file that is not shmem), ENOMEM (the user's RLIMIT_MEMLOCK, counting every
 * live export of that user), ENOSPC (the module's max_total_mb).
 */
#ifndef _UAPI_LINUX_VMEMEXP_H
#define _UAPI_LINUX_VMEMEXP_H

#include <linux/ioctl.h>
#include <linux/types.h>

/*
 * Export writable: the dma-buf fd is O_RDWR. Without it the fd is O_RDONLY
 * and no CPU mapping of the dma-buf, through the fd or an importer, can be
 * writable. The pages are pinned for write either way.
 */
#define VMEMEXP_EXPORT_WRITE	(1U << 0)
#define VMEMEXP_EXPORT_FLAGS	(VMEMEXP_EXPORT_WRITE)

/**
 * struct vmemexp_export - argument of VMEMEXP_IOC_EXPORT
 * @addr:	start of the range in the caller's address space, page aligned
 * @len:	length of the range in bytes, page aligned, not zero
 * @flags:	VMEMEXP_EXPORT_* flags; unknown flags are refused (EINVAL)
 * @fd:		out: the dma-buf file descriptor
 * @reserved:	must be zero (EINVAL otherwise)
 */
struct vmemexp_export {
	__u64 addr;
	__u64 len;
	__u32 flags;
	__s32 fd;
	__u64 reserved[2];
};

/*
 * 0xDB is TI's virtual memory exporter's magic; Documentation/userspace-api/
 * ioctl/ioctl-number.rst gives 0xDB 00-0F to mwave, so vmemexp uses D0-DF.
 */
#define VMEMEXP_IOC_MAGIC	0xDB
#define VMEMEXP_IOC_EXPORT	_IOWR(VMEMEXP_IOC_MAGIC, 0xD0, struct vmemexp_export)

#endif /* _UAPI_LINUX_VMEMEXP_H */
