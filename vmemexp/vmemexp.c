// SPDX-License-Identifier: GPL-2.0
/*
 * vmemexp: export page-aligned memory of the calling process as a dma-buf.
 *
 * The pages of [addr, addr + len) are pinned long-term (FOLL_LONGTERM) at
 * export and stay pinned until the last reference to the dma-buf is dropped,
 * so the exporting process may unmap or free its mapping, or exit, while
 * importers keep using the pages. Pinned pages are charged to the caller's
 * mm->pinned_vm (VmPin) and bounded by RLIMIT_MEMLOCK unless the caller has
 * CAP_IPC_LOCK, as RDMA and io_uring do for registered buffers.
 *
 * Every export is pinned for write, whatever the dma-buf fd's access mode:
 * importing devices are not bound by that mode, and a read-only pin could
 * hand them page cache of a file the caller may only read, or the shared
 * zero page. The export flags choose the fd's mode (O_RDWR or O_RDONLY),
 * which limits what CPU mmap of the fd may do.
 */

#include <linux/capability.h>
#include <linux/dma-buf.h>
#include <linux/dma-mapping.h>
#include <linux/file.h>
#include <linux/hugetlb.h>
#include <linux/iosys-map.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/sched/mm.h>
#include <linux/sched/signal.h>
#include <linux/scatterlist.h>
#include <linux/shmem_fs.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/vmalloc.h>

#include <linux/vmemexp.h>

#include "compat.h"

static unsigned int max_size_mb = 4096;
module_param(max_size_mb, uint, 0644);
MODULE_PARM_DESC(max_size_mb, "Largest export, in MiB (E2BIG above). Default 4096.");

/* pin_user_pages_fast() takes an int count: pin in bounded chunks. */
#define VMEMEXP_PIN_CHUNK	(SZ_64M >> PAGE_SHIFT)

struct vmemexp_buffer {
	struct page **pages;
	unsigned long npages;
	/* The mm charged for the pin; mmgrab()ed so the charge can be undone. */
	struct mm_struct *mm;
	/* Protects attachments and vaddr. */
	struct mutex lock;
	struct list_head attachments;
	void *vaddr;
};

struct vmemexp_attachment {
	struct device *dev;
	struct sg_table sgt;
	struct list_head list;
	bool mapped;
};

static int vmemexp_attach(struct dma_buf *dmabuf,
			  struct dma_buf_attachment *attachment)
{
	struct vmemexp_buffer *buf = dmabuf->priv;
	struct vmemexp_attachment *a;
	int ret;

	a = kzalloc(sizeof(*a), GFP_KERNEL);
	if (!a)
		return -ENOMEM;

	/* Per attachment: the device's segment limit decides the merging. */
	ret = sg_alloc_table_from_pages_segment(&a->sgt, buf->pages,
						buf->npages, 0,
						buf->npages << PAGE_SHIFT,
						dma_get_max_seg_size(attachment->dev),
						GFP_KERNEL);
	if (ret) {
		kfree(a);
		return ret;
	}

	a->dev = attachment->dev;
	INIT_LIST_HEAD(&a->list);
	attachment->priv = a;

	mutex_lock(&buf->lock);
	list_add(&a->list, &buf->attachments);
	mutex_unlock(&buf->lock);
	return 0;
}

static void vmemexp_detach(struct dma_buf *dmabuf,
			   struct dma_buf_attachment *attachment)
{
	struct vmemexp_buffer *buf = dmabuf->priv;
	struct vmemexp_attachment *a = attachment->priv;

	mutex_lock(&buf->lock);
	list_del(&a->list);
	mutex_unlock(&buf->lock);

	sg_free_table(&a->sgt);
	kfree(a);
}

static struct sg_table *vmemexp_map_dma_buf(struct dma_buf_attachment *attachment,
					    enum dma_data_direction dir)
{
	struct vmemexp_buffer *buf = attachment->dmabuf->priv;
	struct vmemexp_attachment *a = attachment->priv;
	int ret;

	/* The dma-buf core holds the reservation lock (6.2+) or none. */
	ret = dma_map_sgtable(a->dev, &a->sgt, dir, 0);
	if (ret)
		return ERR_PTR(ret);

	mutex_lock(&buf->lock);
	a->mapped = true;
	mutex_unlock(&buf->lock);
	return &a->sgt;
}

static void vmemexp_unmap_dma_buf(struct dma_buf_attachment *attachment,
				  struct sg_table *sgt,
				  enum dma_data_direction dir)
{
	struct vmemexp_buffer *buf = attachment->dmabuf->priv;
	struct vmemexp_attachment *a = attachment->priv;

	mutex_lock(&buf->lock);
	a->mapped = false;
	mutex_unlock(&buf->lock);

	dma_unmap_sgtable(a->dev, sgt, dir, 0);
}

static int vmemexp_begin_cpu_access(struct dma_buf *dmabuf,
				    enum dma_data_direction dir)
{
	struct vmemexp_buffer *buf = dmabuf->priv;
	struct vmemexp_attachment *a;

	mutex_lock(&buf->lock);
	if (buf->vaddr)
		invalidate_kernel_vmap_range(buf->vaddr,
					     buf->npages << PAGE_SHIFT);
	list_for_each_entry(a, &buf->attachments, list) {
		if (a->mapped)
			dma_sync_sgtable_for_cpu(a->dev, &a->sgt, dir);
	}
	mutex_unlock(&buf->lock);
	return 0;
}

static int vmemexp_end_cpu_access(struct dma_buf *dmabuf,
				  enum dma_data_direction dir)
{
	struct vmemexp_buffer *buf = dmabuf->priv;
	struct vmemexp_attachment *a;

	mutex_lock(&buf->lock);
	if (buf->vaddr)
		flush_kernel_vmap_range(buf->vaddr, buf->npages << PAGE_SHIFT);
	list_for_each_entry(a, &buf->attachments, list) {
		if (a->mapped)
			dma_sync_sgtable_for_device(a->dev, &a->sgt, dir);
	}
	mutex_unlock(&buf->lock);
	return 0;
}

static vm_fault_t vmemexp_vm_fault(struct vm_fault *vmf)
{
	struct vmemexp_buffer *buf = vmf->vma->vm_private_data;

	if (vmf->pgoff >= buf->npages)
		return VM_FAULT_SIGBUS;

	return vmf_insert_pfn(vmf->vma, vmf->address,
			      page_to_pfn(buf->pages[vmf->pgoff]));
}

static const struct vm_operations_struct vmemexp_vm_ops = {
	.fault = vmemexp_vm_fault,
};

static int vmemexp_mmap(struct dma_buf *dmabuf, struct vm_area_struct *vma)
{
	/*
	 * A private mapping would copy on write and hide later writes of the
	 * producer; the dma-buf core has checked the range and the fd's mode.
	 * VM_MAYSHARE: a shared mapping of an O_RDONLY fd lacks VM_SHARED.
	 */
	if (!(vma->vm_flags & VM_MAYSHARE))
		return -EINVAL;

	vma->vm_ops = &vmemexp_vm_ops;
	vma->vm_private_data = dmabuf->priv;
	vm_flags_set(vma, VM_PFNMAP | VM_DONTEXPAND | VM_DONTDUMP);
	return 0;
}

static int vmemexp_vmap(struct dma_buf *dmabuf, struct iosys_map *map)
{
	struct vmemexp_buffer *buf = dmabuf->priv;
	void *vaddr;

	/* The dma-buf core counts vmaps: this runs once until vunmap. */
	vaddr = vmap(buf->pages, buf->npages, VM_MAP, PAGE_KERNEL);
	if (!vaddr)
		return -ENOMEM;

	mutex_lock(&buf->lock);
	buf->vaddr = vaddr;
	mutex_unlock(&buf->lock);

	iosys_map_set_vaddr(map, vaddr);
	return 0;
}

static void vmemexp_vunmap(struct dma_buf *dmabuf, struct iosys_map *map)
{
	struct vmemexp_buffer *buf = dmabuf->priv;

	mutex_lock(&buf->lock);
	buf->vaddr = NULL;
	mutex_unlock(&buf->lock);

	vunmap(map->vaddr);
}

static void vmemexp_uncharge(struct mm_struct *mm, unsigned long npages)
{
	atomic64_sub(npages, &mm->pinned_vm);
	mmdrop(mm);
}

static void vmemexp_free(struct vmemexp_buffer *buf)
{
	mutex_destroy(&buf->lock);
	kvfree(buf->pages);
	kfree(buf);
}

static void vmemexp_release(struct dma_buf *dmabuf)
{
	struct vmemexp_buffer *buf = dmabuf->priv;

	/* Importers may have written whatever the fd's mode was. */
	unpin_user_pages_dirty_lock(buf->pages, buf->npages, true);
	vmemexp_uncharge(buf->mm, buf->npages);
	vmemexp_free(buf);
}

static const struct dma_buf_ops vmemexp_dmabuf_ops = {
	.attach = vmemexp_attach,
	.detach = vmemexp_detach,
	.map_dma_buf = vmemexp_map_dma_buf,
	.unmap_dma_buf = vmemexp_unmap_dma_buf,
	.begin_cpu_access = vmemexp_begin_cpu_access,
	.end_cpu_access = vmemexp_end_cpu_access,
	.mmap = vmemexp_mmap,
	.vmap = vmemexp_vmap,
	.vunmap = vmemexp_vunmap,
	.release = vmemexp_release,
};

/*
 * Every page of the range must be mapped by a VMA whose pages can be pinned
 * long-term for write. GUP would refuse most of these too, but with EFAULT
 * for all of them; checking first gives each its own errno.
 */
static int vmemexp_check_vmas(struct mm_struct *mm, unsigned long start,
			      unsigned long end)
{
	struct vm_area_struct *vma;
	unsigned long addr = start;
	int ret = 0;

	mmap_read_lock(mm);
	while (addr < end) {
		vma = find_vma(mm, addr);
		if (!vma || vma->vm_start > addr) {
			ret = -EFAULT;
			break;
		}
		if (vma->vm_flags & (VM_IO | VM_PFNMAP)) {
			ret = -EOPNOTSUPP;
			break;
		}
		if ((vma->vm_flags & (VM_READ | VM_WRITE)) !=
		    (VM_READ | VM_WRITE)) {
			ret = -EACCES;
			break;
		}
		/* Shared file pages that need writeback cannot be pinned. */
		if ((vma->vm_flags & VM_SHARED) && vma->vm_file &&
		    !is_vm_hugetlb_page(vma) && !shmem_file(vma->vm_file)) {
			ret = -EOPNOTSUPP;
			break;
		}
		addr = vma->vm_end;
	}
	mmap_read_unlock(mm);
	return ret;
}

static int vmemexp_charge(struct mm_struct *mm, unsigned long npages)
{
	unsigned long limit = rlimit(RLIMIT_MEMLOCK) >> PAGE_SHIFT;
	s64 pinned;

	pinned = atomic64_add_return(npages, &mm->pinned_vm);
	if (pinned > limit && !capable(CAP_IPC_LOCK)) {
		atomic64_sub(npages, &mm->pinned_vm);
		pr_debug("%s[%d]: %lu pages over RLIMIT_MEMLOCK\n",
			 current->comm, task_pid_nr(current), npages);
		return -ENOMEM;
	}
	mmgrab(mm);
	return 0;
}

static int vmemexp_pin(struct vmemexp_buffer *buf, unsigned long start)
{
	unsigned long done = 0;
	int ret;

	while (done < buf->npages) {
		ret = pin_user_pages_fast(start + (done << PAGE_SHIFT),
					  min_t(unsigned long, buf->npages - done,
						VMEMEXP_PIN_CHUNK),
					  FOLL_WRITE | FOLL_LONGTERM,
					  buf->pages + done);
		if (ret <= 0) {
			unpin_user_pages(buf->pages, done);
			return ret ? ret : -EFAULT;
		}
		done += ret;
	}
	return 0;
}

static struct dma_buf *vmemexp_export(const struct vmemexp_export *arg)
{
	struct mm_struct *mm = current->mm;
	DEFINE_DMA_BUF_EXPORT_INFO(exp_info);
	struct vmemexp_buffer *buf;
	struct dma_buf *dmabuf;
	unsigned long npages;
	int ret;

	if ((arg->flags & ~VMEMEXP_EXPORT_FLAGS) ||
	    arg->reserved[0] || arg->reserved[1])
		return ERR_PTR(-EINVAL);
	if (!arg->len || !PAGE_ALIGNED(arg->addr) || !PAGE_ALIGNED(arg->len))
		return ERR_PTR(-EINVAL);
	if (arg->addr + arg->len < arg->addr)
		return ERR_PTR(-EOVERFLOW);
	npages = arg->len >> PAGE_SHIFT;
	if (arg->len > (u64)max_size_mb << 20 ||
	    npages > INT_MAX / sizeof(*buf->pages))
		return ERR_PTR(-E2BIG);
	if (!mm || !access_ok(u64_to_user_ptr(arg->addr), arg->len))
		return ERR_PTR(-EFAULT);

	ret = vmemexp_check_vmas(mm, arg->addr, arg->addr + arg->len);
	if (ret)
		return ERR_PTR(ret);

	buf = kzalloc(sizeof(*buf), GFP_KERNEL);
	if (!buf)
		return ERR_PTR(-ENOMEM);
	mutex_init(&buf->lock);
	INIT_LIST_HEAD(&buf->attachments);
	buf->npages = npages;
	buf->pages = kvmalloc_array(npages, sizeof(*buf->pages), GFP_KERNEL);
	if (!buf->pages) {
		ret = -ENOMEM;
		goto err_free;
	}

	ret = vmemexp_charge(mm, npages);
	if (ret)
		goto err_free;
	buf->mm = mm;

	ret = vmemexp_pin(buf, arg->addr);
	if (ret)
		goto err_uncharge;

	exp_info.ops = &vmemexp_dmabuf_ops;
	exp_info.size = arg->len;
	exp_info.flags = arg->flags & VMEMEXP_EXPORT_WRITE ? O_RDWR : O_RDONLY;
	exp_info.priv = buf;
	dmabuf = dma_buf_export(&exp_info);
	if (IS_ERR(dmabuf)) {
		ret = PTR_ERR(dmabuf);
		goto err_unpin;
	}
	/* From here the dma-buf owns buf: its release undoes everything. */
	return dmabuf;

err_unpin:
	unpin_user_pages(buf->pages, npages);
err_uncharge:
	vmemexp_uncharge(mm, npages);
err_free:
	vmemexp_free(buf);
	return ERR_PTR(ret);
}

static long vmemexp_ioctl_export(struct vmemexp_export __user *uarg)
{
	struct vmemexp_export arg;
	struct dma_buf *dmabuf;
	int fd;

	if (copy_from_user(&arg, uarg, sizeof(arg)))
		return -EFAULT;

	dmabuf = vmemexp_export(&arg);
	if (IS_ERR(dmabuf))
		return PTR_ERR(dmabuf);

	/* Install the fd only once the caller has been told its number. */
	fd = get_unused_fd_flags(O_CLOEXEC);
	if (fd < 0) {
		dma_buf_put(dmabuf);
		return fd;
	}
	if (put_user(fd, &uarg->fd)) {
		put_unused_fd(fd);
		dma_buf_put(dmabuf);
		return -EFAULT;
	}
	fd_install(fd, dmabuf->file);
	return 0;
}

static long vmemexp_ioctl(struct file *file, unsigned int cmd,
			  unsigned long arg)
{
	switch (cmd) {
	case VMEMEXP_IOC_EXPORT:
		return vmemexp_ioctl_export((void __user *)arg);
	default:
		return -ENOTTY;
	}
}

static const struct file_operations vmemexp_fops = {
	.owner = THIS_MODULE,
	.unlocked_ioctl = vmemexp_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
};

static struct miscdevice vmemexp_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "vmemexp",
	.fops = &vmemexp_fops,
};

static int __init vmemexp_init(void)
{
	return misc_register(&vmemexp_misc);
}

static void __exit vmemexp_exit(void)
{
	misc_deregister(&vmemexp_misc);
}

module_init(vmemexp_init);
module_exit(vmemexp_exit);

MODULE_DESCRIPTION("Export page-aligned user memory of the caller as a dma-buf");
MODULE_LICENSE("GPL");
