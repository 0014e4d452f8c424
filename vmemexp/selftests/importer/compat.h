/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The importer's kernel API differences between Linux 6.1 and today, found by
 * Kbuild's probes of the kernel's headers.
 */
#ifndef VMEMEXP_IMPORTER_COMPAT_H
#define VMEMEXP_IMPORTER_COMPAT_H

#include <linux/dma-buf.h>
#include <linux/module.h>

/* Probed in Kbuild, as vmemexp's: 6.13 made namespaces string literals. */
#ifdef VMEMEXP_IMPORT_NS_BARE
MODULE_IMPORT_NS(DMA_BUF);
#else
MODULE_IMPORT_NS("DMA_BUF");
#endif

/*
 * 6.2 moved the reservation lock of map/unmap to the callers, with _unlocked
 * helpers, and 6.1.y has them too.
 */
#ifdef VMEMEXP_HAVE_MAP_UNLOCKED
#define vmi_map_attachment dma_buf_map_attachment_unlocked
#define vmi_unmap_attachment dma_buf_unmap_attachment_unlocked
#else
#define vmi_map_attachment dma_buf_map_attachment
#define vmi_unmap_attachment dma_buf_unmap_attachment
#endif

#endif /* VMEMEXP_IMPORTER_COMPAT_H */
