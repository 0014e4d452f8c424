/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * vmemexp_importer: a dma-buf importer for vmemexp's selftest only.
 *
 * /dev/vmemexp_importer plays a device driver: each open file imports one
 * dma-buf (VMEMEXP_IMPORTER_IOC_IMPORT), attaches a DMA-capable device to it
 * and maps it for DMA (VMEMEXP_IMPORTER_IOC_MAP, in a given direction), and
 * lets its own file be mmap()ed onto the dma-buf through dma_buf_mmap(), as
 * drivers that hand out mmap offsets for imported objects do. It reaches the
 * exporter's paths that no driver on the testbed does.
 */
#ifndef _UAPI_LINUX_VMEMEXP_IMPORTER_H
#define _UAPI_LINUX_VMEMEXP_IMPORTER_H

#include <linux/ioctl.h>
#include <linux/types.h>

/* Directions of VMEMEXP_IMPORTER_IOC_MAP, as enum dma_data_direction. */
#define VMEMEXP_IMPORTER_BIDIRECTIONAL	0
#define VMEMEXP_IMPORTER_TO_DEVICE	1
#define VMEMEXP_IMPORTER_FROM_DEVICE	2

/* Import and attach the dma-buf fd (__s32); once per open file. */
#define VMEMEXP_IMPORTER_IOC_IMPORT	_IOW(0xDB, 0xE0, __s32)
/* Map the attachment for DMA in a direction (__u32); at most twice. */
#define VMEMEXP_IMPORTER_IOC_MAP	_IOW(0xDB, 0xE1, __u32)
/* Unmap every mapping made. */
#define VMEMEXP_IMPORTER_IOC_UNMAP	_IO(0xDB, 0xE2)

#endif /* _UAPI_LINUX_VMEMEXP_IMPORTER_H */
