// SPDX-License-Identifier: GPL-2.0
/*
 * vmemexp: export page-aligned memory of the calling process as a dma-buf.
 *
 * The pages of [addr, addr + len) are pinned long-term (FOLL_LONGTERM) at
 * export and stay pinned until the last reference to the dma-buf is dropped,
 * so the exporting process may unmap or free its mapping, or exit, while
 * importers keep using the pages.
 *
 * Holders of the dma-buf are not trusted, and neither is the exporter:
 *
 * - Only anonymous, shmem (memfd, tmpfs, shared anonymous) and hugetlb pages
 *   are exported. The rule is checked on the pinned folios themselves, after
 *   the pin, so no mapping that changes between a check and the pin can slip
 *   page cache of a disk filesystem through (GUP refuses those pins itself
 *   only from 6.5 on).
 * - Every pinned page is charged to the exporting user's locked_vm, against
 *   RLIMIT_MEMLOCK unless the exporter has CAP_IPC_LOCK, the way io_uring
 *   charges registered buffers. The charge lives as long as the dma-buf, not
 *   the process: exporting from children that exit gains nothing. The mm's
 *   pinned_vm is charged too, so VmPin shows the pin while the mm lives.
 *   max_total_mb bounds all exports of all users together.
 * - Every export is pinned for write, whatever the dma-buf fd's access mode:
 *   importing devices are not bound by that mode, and a read-only pin could
 *   hand them page cache of a file the caller may only read, or the shared
 *   zero page. The export flags choose the fd's mode (O_RDWR or O_RDONLY); an
 *   O_RDONLY export can never be mapped writable by the CPU, whichever path
 *   reaches its mmap (the fd itself, or an importer's dma_buf_mmap()).
 * - Each dma-buf is named "vmemexp:<pid>:<comm>" after its exporter, as
 *   debugfs's bufinfo and the fd's fdinfo show.
 */

#include <linux/capability.h>
#include <linux/cred.h>
#include <linux/dma-buf.h>
#include <linux/dma-mapping.h>
#include <linux/file.h>
#include <linux/iosys-map.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/sched/mm.h>
#include <linux/sched/signal.h>
#include <linux/sched/user.h>
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

static unsigned int max_total_mb;
module_param(max_total_mb, uint, 0644);
MODULE_PARM_DESC(max_total_mb,
		 "All exports of all users together, in MiB (ENOSPC above). Default 0: no bound but each user's RLIMIT_MEMLOCK.");

/* Pages pinned by all live exports. */
static atomic_long_t vmemexp_total_pages = ATOMIC_LONG_INIT(0);

/* pin_user_pages_fast() takes an int count: pin in bounded chunks. */
#define VMEMEXP_PIN_CHUNK	(SZ_64M >> PAGE_SHIFT)
/* A CPU fault maps this many pages (2 MiB with 4 KiB pages) at once. */
#define VMEMEXP_FAULT_AROUND	512

struct vmemexp_buffer {
	struct page **pages;
	unsigned long npages;
	/*
	 * The exporter's credentials: their user is charged for the pin
	 * (locked_vm), and the reference keeps that user_struct alive
	 * (free_uid() is not exported to modules before 6.2).
	 */
	const struct cred *cred;
	/* The mm whose pinned_vm shows the pin; mmgrab()ed. */
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
	/* The direction of the mapping, while mapped. */
	enum dma_data_direction dir;
	bool mapped;
};

static int vmemexp_attach(struct dma_buf *dmabuf,
			  struct dma_buf_attachment *attachment)
{
	struct vmemexp_buffer *buf = dmabuf->priv;
	struct vmemexp_attachment *a;
	int ret;

	a = kzalloc(sizeof(*a), GFP_KERNEL_ACCOUNT);
	if (!a)
		return -ENOMEM;

	/* Per attachment: the device's segment limit decides the merging. */
	ret = sg_alloc_table_from_pages_segment(&a->sgt, buf->pages,
						buf->npages, 0,
						buf->npages << PAGE_SHIFT,
						dma_get_max_seg_size(attachment->dev),
						GFP_KERNEL_ACCOUNT);
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

	/*
	 * One table per attachment: a second map before the unmap would
	 * map it again over the first and leak that mapping.
	 */
	mutex_lock(&buf->lock);
	if (a->mapped) {
		ret = -EBUSY;
	} else {
		ret = dma_map_sgtable(a->dev, &a->sgt, dir, 0);
		if (!ret) {
			a->dir = dir;
			a->mapped = true;
		}
	}
	mutex_unlock(&buf->lock);
	return ret ? ERR_PTR(ret) : &a->sgt;
}

static void vmemexp_unmap_dma_buf(struct dma_buf_attachment *attachment,
				  struct sg_table *sgt,
				  enum dma_data_direction dir)
{
	struct vmemexp_buffer *buf = attachment->dmabuf->priv;
	struct vmemexp_attachment *a = attachment->priv;

	mutex_lock(&buf->lock);
	dma_unmap_sgtable(a->dev, sgt, a->dir, 0);
	a->mapped = false;
	mutex_unlock(&buf->lock);
}

/*
 * CPU access syncs every mapped attachment in the direction its importer
 * mapped it with: the DMA API wants the mapping's direction, not the CPU's,
 * and bounce buffers or non-coherent caches copy or invalidate by it.
 */
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
			dma_sync_sgtable_for_cpu(a->dev, &a->sgt, a->dir);
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
			dma_sync_sgtable_for_device(a->dev, &a->sgt, a->dir);
	}
	mutex_unlock(&buf->lock);
	return 0;
}

/* Maps the faulting page and up to VMEMEXP_FAULT_AROUND - 1 after it. */
static vm_fault_t vmemexp_vm_fault(struct vm_fault *vmf)
{
	struct vm_area_struct *vma = vmf->vma;
	struct vmemexp_buffer *buf = vma->vm_private_data;
	unsigned long addr = vmf->address & PAGE_MASK;
	pgoff_t pgoff = vmf->pgoff;
	vm_fault_t ret;
	unsigned int n;

	if (pgoff >= buf->npages)
		return VM_FAULT_SIGBUS;

	ret = vmf_insert_pfn(vma, addr, page_to_pfn(buf->pages[pgoff]));
	for (n = 1; n < VMEMEXP_FAULT_AROUND && ret == VM_FAULT_NOPAGE; n++) {
		addr += PAGE_SIZE;
		if (addr >= vma->vm_end || pgoff + n >= buf->npages)
			break;
		if (vmf_insert_pfn(vma, addr,
				   page_to_pfn(buf->pages[pgoff + n])) !=
		    VM_FAULT_NOPAGE)
			break;
	}
	return ret;
}

static const struct vm_operations_struct vmemexp_vm_ops = {
	.fault = vmemexp_vm_fault,
};

/*
 * Reached through mmap of the dma-buf fd, where the VFS has checked the fd's
 * mode, and through dma_buf_mmap() from an importer's own mmap, where nobody
 * has: the fd's mode is enforced here for both.
 */
static int vmemexp_mmap(struct dma_buf *dmabuf, struct vm_area_struct *vma)
{
	/*
	 * A private mapping would copy on write and hide later writes of the
	 * producer. VM_MAYSHARE: a shared mapping of an O_RDONLY fd lacks
	 * VM_SHARED.
	 */
	if (!(vma->vm_flags & VM_MAYSHARE))
		return -EINVAL;
	if (!(dmabuf->file->f_mode & FMODE_WRITE)) {
		if (vma->vm_flags & VM_WRITE)
			return -EACCES;
		vm_flags_clear(vma, VM_MAYWRITE);
	}

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

/*
 * Charges npages to the calling user (RLIMIT_MEMLOCK unless CAP_IPC_LOCK),
 * to the module-wide bound, and to the mm's pinned_vm.
 */
static int vmemexp_charge(struct vmemexp_buffer *buf, struct mm_struct *mm)
{
	unsigned long npages = buf->npages, cur, new, limit;
	const struct cred *cred;

	if (max_total_mb) {
		limit = (unsigned long)max_total_mb << (20 - PAGE_SHIFT);
		cur = atomic_long_read(&vmemexp_total_pages);
		do {
			new = cur + npages;
			if (new > limit) {
				pr_debug("%s[%d]: %lu pages over max_total_mb\n",
					 current->comm, task_pid_nr(current),
					 npages);
				return -ENOSPC;
			}
		} while (!atomic_long_try_cmpxchg(&vmemexp_total_pages, &cur,
						  new));
	} else {
		atomic_long_add(npages, &vmemexp_total_pages);
	}

	cred = get_current_cred();
	limit = capable(CAP_IPC_LOCK) ? ULONG_MAX :
		rlimit(RLIMIT_MEMLOCK) >> PAGE_SHIFT;
	cur = atomic_long_read(&cred->user->locked_vm);
	do {
		new = cur + npages;
		if (new > limit || new < cur) {
			pr_debug("%s[%d]: %lu pages over the user's RLIMIT_MEMLOCK\n",
				 current->comm, task_pid_nr(current), npages);
			put_cred(cred);
			atomic_long_sub(npages, &vmemexp_total_pages);
			return -ENOMEM;
		}
	} while (!atomic_long_try_cmpxchg(&cred->user->locked_vm, &cur, new));
	buf->cred = cred;

	atomic64_add(npages, &mm->pinned_vm);
	mmgrab(mm);
	buf->mm = mm;
	return 0;
}

static void vmemexp_uncharge(struct vmemexp_buffer *buf)
{
	atomic64_sub(buf->npages, &buf->mm->pinned_vm);
	mmdrop(buf->mm);
	atomic_long_sub(buf->npages, &buf->cred->user->locked_vm);
	put_cred(buf->cred);
	atomic_long_sub(buf->npages, &vmemexp_total_pages);
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
	vmemexp_uncharge(buf);
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
 * A first pass over the VMAs, for an errno that says what is wrong with the
 * range (GUP would fail most of these with EFAULT). It decides nothing on
 * its own: the mappings may change once mmap_lock is dropped, so the pinned
 * folios are checked again by vmemexp_check_folios().
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

/*
 * The rule itself, on what was actually pinned: anonymous memory (private
 * file mappings included, as FOLL_WRITE copied them on write), hugetlb and
 * shmem. Anything else, page cache of a disk filesystem above all, must not
 * stay pinned long-term for write: its writeback would race the importers.
 */
static int vmemexp_check_folios(struct page **pages, unsigned long npages)
{
	unsigned long i;

	for (i = 0; i < npages; i++) {
		struct folio *folio = page_folio(pages[i]);
		struct address_space *mapping;

		if (folio_test_anon(folio) || folio_test_hugetlb(folio))
			continue;
		mapping = folio_mapping(folio);
		if (mapping && shmem_mapping(mapping))
			continue;
		pr_debug("%s[%d]: page %lu of the range is not anonymous, shmem or hugetlb memory\n",
			 current->comm, task_pid_nr(current), i);
		return -EOPNOTSUPP;
	}
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

	ret = vmemexp_check_folios(buf->pages, buf->npages);
	if (ret)
		unpin_user_pages(buf->pages, buf->npages);
	return ret;
}

/* Names the dma-buf after the exporter, for bufinfo and fdinfo. */
static void vmemexp_set_name(struct dma_buf *dmabuf)
{
	char *name = kasprintf(GFP_KERNEL_ACCOUNT, "vmemexp:%d:%s",
			       task_tgid_nr(current), current->comm);

	if (!name)
		return;
	spin_lock(&dmabuf->name_lock);
	kfree(dmabuf->name);
	dmabuf->name = name;
	spin_unlock(&dmabuf->name_lock);
}

static struct dma_buf *vmemexp_export(const struct vmemexp_export *arg)
{
	struct mm_struct *mm = current->mm;
	DEFINE_DMA_BUF_EXPORT_INFO(exp_info);
	struct vmemexp_buffer *buf;
	struct dma_buf *dmabuf;
	unsigned long addr, len, npages;
	int ret;

	if ((arg->flags & ~VMEMEXP_EXPORT_FLAGS) ||
	    arg->reserved[0] || arg->reserved[1])
		return ERR_PTR(-EINVAL);
	/* 32-bit kernels: a range beyond unsigned long is not the caller's. */
	if ((unsigned long)arg->addr != arg->addr ||
	    (unsigned long)arg->len != arg->len)
		return ERR_PTR(-EOVERFLOW);
	/* Tagged pointers (arm64 TBI, x86 LAM) name the same memory. */
	addr = untagged_addr((unsigned long)arg->addr);
	len = arg->len;
	if (!len || !PAGE_ALIGNED(addr) || !PAGE_ALIGNED(len))
		return ERR_PTR(-EINVAL);
	if (addr + len < addr)
		return ERR_PTR(-EOVERFLOW);
	npages = len >> PAGE_SHIFT;
	if (len > (unsigned long)max_size_mb << 20 ||
	    npages > INT_MAX / sizeof(*buf->pages))
		return ERR_PTR(-E2BIG);
	if (!mm || !access_ok((void __user *)addr, len))
		return ERR_PTR(-EFAULT);

	ret = vmemexp_check_vmas(mm, addr, addr + len);
	if (ret)
		return ERR_PTR(ret);

	buf = kzalloc(sizeof(*buf), GFP_KERNEL_ACCOUNT);
	if (!buf)
		return ERR_PTR(-ENOMEM);
	mutex_init(&buf->lock);
	INIT_LIST_HEAD(&buf->attachments);
	buf->npages = npages;
	buf->pages = kvmalloc_array(npages, sizeof(*buf->pages),
				    GFP_KERNEL_ACCOUNT);
	if (!buf->pages) {
		ret = -ENOMEM;
		goto err_free;
	}

	ret = vmemexp_charge(buf, mm);
	if (ret)
		goto err_free;

	ret = vmemexp_pin(buf, addr);
	if (ret)
		goto err_uncharge;

	exp_info.ops = &vmemexp_dmabuf_ops;
	exp_info.size = len;
	exp_info.flags = arg->flags & VMEMEXP_EXPORT_WRITE ? O_RDWR : O_RDONLY;
	exp_info.priv = buf;
	dmabuf = dma_buf_export(&exp_info);
	if (IS_ERR(dmabuf)) {
		ret = PTR_ERR(dmabuf);
		goto err_unpin;
	}
	/* From here the dma-buf owns buf: its release undoes everything. */
	vmemexp_set_name(dmabuf);
	return dmabuf;

err_unpin:
	unpin_user_pages(buf->pages, npages);
err_uncharge:
	vmemexp_uncharge(buf);
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
	/*
	 * Exporting pins memory: the device's write permission, not read,
	 * is what grants it (a group given read access to /dev gets none).
	 */
	if (!(file->f_mode & FMODE_WRITE))
		return -EBADF;

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
