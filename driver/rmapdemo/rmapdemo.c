// SPDX-License-Identifier: GPL-2.0
/*
 * rmapdemo: one buffer, mapped to user space four ways, so that rmaptrace can
 * show what each way costs at fault time.
 *
 *   /dev/rmapdemo_pfn    remap_pfn_range() in ->mmap: every PTE exists before the
 *                        first access, so the process never faults on it. The VMA
 *                        becomes VM_IO|VM_PFNMAP: the kernel treats the memory as
 *                        raw frames (no struct page refcounts, no rmap, no GUP,
 *                        no core dump). Right for MMIO and reserved memory.
 *   /dev/rmapdemo_pages  vm_insert_pages() in ->mmap: also prefilled, no faults,
 *                        but the pages stay ordinary refcounted pages in a
 *                        VM_MIXEDMAP VMA, so get_user_pages, O_DIRECT and
 *                        /proc/PID/mem work on them. Right for kernel-allocated
 *                        RAM the process will use in full.
 *   /dev/rmapdemo_vmf    vmf_insert_pfn() for each page in ->mmap: the same
 *                        VM_IO|VM_PFNMAP result as remap_pfn_range, one page
 *                        at a time, as drivers written around a fault-time
 *                        helper sometimes do at mmap.
 *   /dev/rmapdemo_fault  no PTEs at mmap time; vm_ops->fault (rmapdemo_fault)
 *                        supplies one page per first touch, so the process pays
 *                        one fault per page it uses and nothing for pages it
 *                        never touches. Right for large or sparse buffers, or
 *                        memory the driver produces on demand.
 *
 * The core kernel does the third thing for MAP_ANONYMOUS (do_anonymous_page) and
 * for shmem/files (shmem_fault, filemap_fault); a driver must choose.
 */
#include <linux/fs.h>
#include <linux/gfp.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/version.h>

#define RMAPDEMO_PAGES 64

static void *buf;		/* RMAPDEMO_PAGES physically contiguous pages */
static struct page *buf_pages[RMAPDEMO_PAGES];

static struct miscdevice dev_pfn, dev_pages, dev_vmf, dev_fault;

static void set_vm_flags(struct vm_area_struct *vma, unsigned long flags)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 3, 0)
	vm_flags_set(vma, flags);
#else
	vma->vm_flags |= flags;
#endif
}

/* The requested window [vm_pgoff, vm_pgoff + pages) must lie inside the buffer. */
static int check_range(struct vm_area_struct *vma)
{
	unsigned long pages = vma_pages(vma);

	if (vma->vm_pgoff >= RMAPDEMO_PAGES ||
	    pages > RMAPDEMO_PAGES - vma->vm_pgoff)
		return -EINVAL;
	return 0;
}

/*
 * Lazy mode: called from __do_fault() for the first touch of each page (read
 * faults via do_read_fault, MAP_SHARED writes via do_shared_fault). Handing back
 * vmf->page with a reference lets the core kernel lock it, install the PTE and
 * account it; the reference is dropped when the PTE goes away.
 */
static vm_fault_t rmapdemo_fault(struct vm_fault *vmf)
{
	struct page *page;

	if (vmf->pgoff >= RMAPDEMO_PAGES)
		return VM_FAULT_SIGBUS;
	page = buf_pages[vmf->pgoff];
	get_page(page);
	vmf->page = page;
	return 0;
}

static const struct vm_operations_struct rmapdemo_vm_ops = {
	.fault = rmapdemo_fault,
};

static int rmapdemo_mmap(struct file *file, struct vm_area_struct *vma)
{
	struct miscdevice *misc = file->private_data;
	unsigned long num;
	int ret;

	ret = check_range(vma);
	if (ret)
		return ret;
	/* The buffer has a fixed size: forbid mremap growth; keep it out of core dumps. */
	set_vm_flags(vma, VM_DONTEXPAND | VM_DONTDUMP);

	if (misc == &dev_pfn) {
		/* Cost: all PTEs now (one page-table walk per page), none later. */
		return remap_pfn_range(vma, vma->vm_start,
				       page_to_pfn(buf_pages[0]) + vma->vm_pgoff,
				       vma->vm_end - vma->vm_start,
				       vma->vm_page_prot);
	}
	if (misc == &dev_pages) {
		/* Cost: all PTEs now, batched under one page-table lock per PMD. */
		num = vma_pages(vma);
		ret = vm_insert_pages(vma, vma->vm_start,
				      buf_pages + vma->vm_pgoff, &num);
		return ret ? ret : (num ? -EFAULT : 0);
	}
	if (misc == &dev_vmf) {
		unsigned long i;
		vm_fault_t made;

		/* Raw frames cannot be copied on write: shared mappings only. */
		if (is_cow_mapping(vma->vm_flags))
			return -EINVAL;
		set_vm_flags(vma, VM_IO | VM_PFNMAP);
		/* Cost: all PTEs now, one page-table lookup and lock per page. */
		for (i = 0; i < vma_pages(vma); i++) {
			made = vmf_insert_pfn(vma, vma->vm_start + i * PAGE_SIZE,
					      page_to_pfn(buf_pages[vma->vm_pgoff + i]));
			if (made & VM_FAULT_ERROR)
				return -ENOMEM;
		}
		return 0;
	}
	/* Cost: nothing now, one fault per page on first touch. */
	vma->vm_ops = &rmapdemo_vm_ops;
	return 0;
}

static const struct file_operations rmapdemo_fops = {
	.owner = THIS_MODULE,
	.mmap = rmapdemo_mmap,
};

static struct miscdevice dev_pfn = {
	.minor = MISC_DYNAMIC_MINOR, .name = "rmapdemo_pfn", .fops = &rmapdemo_fops, .mode = 0666,
};
static struct miscdevice dev_pages = {
	.minor = MISC_DYNAMIC_MINOR, .name = "rmapdemo_pages", .fops = &rmapdemo_fops, .mode = 0666,
};
static struct miscdevice dev_vmf = {
	.minor = MISC_DYNAMIC_MINOR, .name = "rmapdemo_vmf", .fops = &rmapdemo_fops, .mode = 0666,
};
static struct miscdevice dev_fault = {
	.minor = MISC_DYNAMIC_MINOR, .name = "rmapdemo_fault", .fops = &rmapdemo_fops, .mode = 0666,
};

static int __init rmapdemo_init(void)
{
	int i, ret;

	/*
	 * alloc_pages_exact splits the block into order-0 pages with their own
	 * refcounts: vm_insert_pages and get_page in the fault handler need that
	 * (tail pages of an unsplit high-order block have refcount 0).
	 */
	buf = alloc_pages_exact(RMAPDEMO_PAGES * PAGE_SIZE, GFP_KERNEL | __GFP_ZERO);
	if (!buf)
		return -ENOMEM;
	for (i = 0; i < RMAPDEMO_PAGES; i++)
		buf_pages[i] = virt_to_page(buf + i * PAGE_SIZE);

	ret = misc_register(&dev_pfn);
	if (ret)
		goto free_buf;
	ret = misc_register(&dev_pages);
	if (ret)
		goto unreg_pfn;
	ret = misc_register(&dev_vmf);
	if (ret)
		goto unreg_pages;
	ret = misc_register(&dev_fault);
	if (ret)
		goto unreg_vmf;
	pr_info("rmapdemo: %d pages at pfn %#lx\n", RMAPDEMO_PAGES,
		page_to_pfn(buf_pages[0]));
	return 0;

unreg_vmf:
	misc_deregister(&dev_vmf);
unreg_pages:
	misc_deregister(&dev_pages);
unreg_pfn:
	misc_deregister(&dev_pfn);
free_buf:
	free_pages_exact(buf, RMAPDEMO_PAGES * PAGE_SIZE);
	return ret;
}

/* No mapping can outlive this: every VMA holds the file, which holds the module. */
static void __exit rmapdemo_exit(void)
{
	misc_deregister(&dev_fault);
	misc_deregister(&dev_vmf);
	misc_deregister(&dev_pages);
	misc_deregister(&dev_pfn);
	free_pages_exact(buf, RMAPDEMO_PAGES * PAGE_SIZE);
}

module_init(rmapdemo_init);
module_exit(rmapdemo_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("One buffer mapped by remap_pfn_range, vm_insert_pages, vmf_insert_pfn or a lazy vm_ops->fault");
