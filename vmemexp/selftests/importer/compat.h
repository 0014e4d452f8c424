/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The importer's kernel API differences between Linux 6.1 and today; as
 * vmemexp's compat.h, checkpatch runs here with
 * --ignore LINUX_VERSION_CODE,CONSTANT_COMPARISON.
 */
#ifndef VMEMEXP_IMPORTER_COMPAT_H
#define VMEMEXP_IMPORTER_COMPAT_H

#include <linux/dma-buf.h>
#include <linux/module.h>
#include <linux/version.h>

#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 13, 0)
MODULE_IMPORT_NS("DMA_BUF");
#else
MODULE_IMPORT_NS(DMA_BUF);
#endif

/* 6.2 moved the reservation lock of map/unmap to the callers, with _unlocked helpers. */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 2, 0)
#define vmi_map_attachment dma_buf_map_attachment_unlocked
#define vmi_unmap_attachment dma_buf_unmap_attachment_unlocked
#else
#define vmi_map_attachment dma_buf_map_attachment
#define vmi_unmap_attachment dma_buf_unmap_attachment
#endif

#endif /* VMEMEXP_IMPORTER_COMPAT_H */
