// SPDX-License-Identifier: GPL-2.0
/*
 * vmemexp_importer: a dma-buf importer for vmemexp's selftest only; see
 * include/uapi/linux/vmemexp_importer.h. Never load it on a system in use:
 * whoever can open its device can map any dma-buf fd they hold through it.
 */

#include <linux/dma-buf.h>
#include <linux/dma-mapping.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/platform_device.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#include <linux/vmemexp_importer.h>

#include "compat.h"

#define VMI_MAPS	2

static struct platform_device *vmi_pdev;

struct vmi_file {
	struct mutex lock;
	struct dma_buf *dmabuf;
	struct dma_buf_attachment *attach;
	struct sg_table *sgt[VMI_MAPS];
	enum dma_data_direction dir[VMI_MAPS];
	unsigned int nmaps;
};

static int vmi_open(struct inode *inode, struct file *file)
{
	struct vmi_file *f = kzalloc(sizeof(*f), GFP_KERNEL);

	if (!f)
		return -ENOMEM;
	mutex_init(&f->lock);
	file->private_data = f;
	return 0;
}

static void vmi_unmap_all(struct vmi_file *f)
{
	while (f->nmaps) {
		f->nmaps--;
		vmi_unmap_attachment(f->attach, f->sgt[f->nmaps],
				     f->dir[f->nmaps]);
	}
}

static int vmi_release(struct inode *inode, struct file *file)
{
	struct vmi_file *f = file->private_data;

	if (f->attach) {
		vmi_unmap_all(f);
		dma_buf_detach(f->dmabuf, f->attach);
		dma_buf_put(f->dmabuf);
	}
	mutex_destroy(&f->lock);
	kfree(f);
	return 0;
}

static long vmi_import(struct vmi_file *f, int fd)
{
	struct dma_buf *dmabuf;
	struct dma_buf_attachment *attach;

	if (f->dmabuf)
		return -EBUSY;
	dmabuf = dma_buf_get(fd);
	if (IS_ERR(dmabuf))
		return PTR_ERR(dmabuf);
	attach = dma_buf_attach(dmabuf, &vmi_pdev->dev);
	if (IS_ERR(attach)) {
		dma_buf_put(dmabuf);
		return PTR_ERR(attach);
	}
	f->dmabuf = dmabuf;
	f->attach = attach;
	return 0;
}

static long vmi_map(struct vmi_file *f, u32 dir)
{
	struct sg_table *sgt;

	if (!f->attach)
		return -ENOENT;
	if (dir > DMA_FROM_DEVICE)
		return -EINVAL;
	if (f->nmaps == VMI_MAPS)
		return -ENOSPC;
	sgt = vmi_map_attachment(f->attach, dir);
	if (IS_ERR(sgt))
		return PTR_ERR(sgt);
	f->sgt[f->nmaps] = sgt;
	f->dir[f->nmaps] = dir;
	f->nmaps++;
	return 0;
}

static long vmi_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct vmi_file *f = file->private_data;
	long ret;
	u32 val = 0;

	/*
	 * The argument is read before f->lock is taken: a fault takes mmap_lock,
	 * which .mmap holds when it takes f->lock (lockdep, make debug-kernel).
	 */
	if ((cmd == VMEMEXP_IMPORTER_IOC_IMPORT || cmd == VMEMEXP_IMPORTER_IOC_MAP) &&
	    get_user(val, (u32 __user *)arg))
		return -EFAULT;

	mutex_lock(&f->lock);
	switch (cmd) {
	case VMEMEXP_IMPORTER_IOC_IMPORT:
		ret = vmi_import(f, (s32)val);
		break;
	case VMEMEXP_IMPORTER_IOC_MAP:
		ret = vmi_map(f, val);
		break;
	case VMEMEXP_IMPORTER_IOC_UNMAP:
		vmi_unmap_all(f);
		ret = 0;
		break;
	default:
		ret = -ENOTTY;
	}
	mutex_unlock(&f->lock);
	return ret;
}

/* As a driver that maps imported objects: straight to dma_buf_mmap(). */
static int vmi_mmap(struct file *file, struct vm_area_struct *vma)
{
	struct vmi_file *f = file->private_data;
	int ret;

	mutex_lock(&f->lock);
	ret = f->dmabuf ? dma_buf_mmap(f->dmabuf, vma, vma->vm_pgoff) : -ENOENT;
	mutex_unlock(&f->lock);
	return ret;
}

static const struct file_operations vmi_fops = {
	.owner = THIS_MODULE,
	.open = vmi_open,
	.release = vmi_release,
	.unlocked_ioctl = vmi_ioctl,
	.mmap = vmi_mmap,
};

static struct miscdevice vmi_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "vmemexp_importer",
	.fops = &vmi_fops,
};

static int __init vmi_init(void)
{
	int ret;

	vmi_pdev = platform_device_register_simple("vmemexp_importer",
						   PLATFORM_DEVID_NONE, NULL, 0);
	if (IS_ERR(vmi_pdev))
		return PTR_ERR(vmi_pdev);
	ret = dma_coerce_mask_and_coherent(&vmi_pdev->dev, DMA_BIT_MASK(64));
	if (!ret)
		ret = misc_register(&vmi_misc);
	if (ret)
		platform_device_unregister(vmi_pdev);
	return ret;
}

static void __exit vmi_exit(void)
{
	misc_deregister(&vmi_misc);
	platform_device_unregister(vmi_pdev);
}

module_init(vmi_init);
module_exit(vmi_exit);

MODULE_DESCRIPTION("dma-buf importer for vmemexp's selftest");
MODULE_LICENSE("GPL");
