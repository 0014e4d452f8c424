// SPDX-License-Identifier: GPL-2.0
/*
 * vmemexp selftest: every case asserts an errno, a counter or the bytes seen
 * through the dma-buf. Needs root, the vmemexp module and the selftest's
 * importer (selftests/importer/) loaded, for the PRIME cases vkms and vgem,
 * and for the file cases an ext4 image (made by tests/vm/setup module) and
 * loop devices. TAP output; exit status 1 on any failure.
 *
 *   vmemexp_test [NAME-SUBSTRING...]
 *   VMEMEXP_CYCLES=N   export/release cycles of the "cycles" case (100000)
 *   VMEMEXP_RACE_ROUNDS=N  rounds of the "race_file_pin" case (1000 before
 *                      Linux 6.5, 200 after)
 *   VMEMEXP_EXT4_IMAGE=PATH  the ext4 image (ext4.img beside this program)
 *   vmemexp_test --load PATH.ko | --unload NAME
 *                      insmod/rmmod by the same syscalls, for userlands
 *                      without kmod
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <linux/dma-buf.h>
#include <linux/loop.h>
#include <linux/vmemexp.h>
#include <linux/vmemexp_importer.h>
#include <drm.h>
#include <drm_mode.h>
#include <malloc.h>

/* The page size of the running kernel, set in main(). */
static unsigned long page_size;
#define PAGE page_size
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define DEV_PATH "/dev/vmemexp"

static int dev = -1;

static void diag(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fputs("# ", stdout);
	vprintf(fmt, ap);
	fputc('\n', stdout);
	va_end(ap);
	fflush(stdout);
}

#define FAIL(...) do { diag(__VA_ARGS__); return -1; } while (0)
#define ASSERT(cond) do { if (!(cond)) FAIL("%s:%d: %s", __FILE__, __LINE__, #cond); } while (0)

/* Returns 0 and the dma-buf fd in *fd, or -errno. */
static int vexport(int devfd, const void *addr, size_t len, unsigned int flags, int *fd)
{
	struct vmemexp_export e = {
		.addr = (uintptr_t)addr, .len = len, .flags = flags, .fd = -1,
	};

	*fd = -1;
	if (ioctl(devfd, VMEMEXP_IOC_EXPORT, &e))
		return -errno;
	*fd = e.fd;
	return 0;
}

static int export_errno(const void *addr, size_t len, unsigned int flags)
{
	int fd = -1, ret = vexport(dev, addr, len, flags, &fd);

	if (!ret)
		close(fd);
	return ret;
}

static void *map_anon(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	return p == MAP_FAILED ? NULL : p;
}

static uint32_t pattern(size_t i, uint32_t seed)
{
	uint32_t x = (uint32_t)i * 2654435761u ^ seed;

	return x ^ (x >> 13);
}

static void fill(void *p, size_t len, uint32_t seed)
{
	uint32_t *w = p;

	for (size_t i = 0; i < len / 4; i++)
		w[i] = pattern(i, seed);
}

/* Index of the first word that differs, or -1. */
static long differs(const void *p, size_t len, uint32_t seed)
{
	const uint32_t *w = p;

	for (size_t i = 0; i < len / 4; i++)
		if (w[i] != pattern(i, seed))
			return (long)i;
	return -1;
}

static long vmpin_kb(void)
{
	char line[256];
	long kb = -1;
	FILE *f = fopen("/proc/self/status", "re");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmPin: %ld kB", &kb) == 1)
			break;
	fclose(f);
	return kb;
}

static int count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;

	if (!d)
		return -1;
	while ((e = readdir(d)))
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n - 1; /* opendir's own */
}

static void *map_dmabuf(int fd, size_t len, int prot)
{
	void *p = mmap(NULL, len, prot, MAP_SHARED, fd, 0);

	return p == MAP_FAILED ? NULL : p;
}

static int dmabuf_sync(int fd, __u64 flags)
{
	struct dma_buf_sync s = { .flags = flags };

	return ioctl(fd, DMA_BUF_IOCTL_SYNC, &s) ? -errno : 0;
}

/* Runs fn in a child process; its exit status 0 means pass. */
static int in_child(int (*fn)(void *), void *arg)
{
	int status;
	pid_t pid = fork();

	if (pid < 0)
		FAIL("fork: %s", strerror(errno));
	if (!pid)
		_exit(fn(arg) ? 1 : 0);
	if (waitpid(pid, &status, 0) != pid)
		FAIL("waitpid: %s", strerror(errno));
	if (!WIFEXITED(status) || WEXITSTATUS(status))
		FAIL("child failed (status 0x%x)", status);
	return 0;
}

static int send_fd(int sock, int fd)
{
	char byte = 'F';
	struct iovec iov = { .iov_base = &byte, .iov_len = 1 };
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(sizeof(int))];
	} u = { 0 };
	struct msghdr msg = {
		.msg_iov = &iov, .msg_iovlen = 1,
		.msg_control = u.buf, .msg_controllen = sizeof(u.buf),
	};
	struct cmsghdr *c = CMSG_FIRSTHDR(&msg);

	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &fd, sizeof(int));
	return sendmsg(sock, &msg, 0) == 1 ? 0 : -errno;
}

static int recv_fd(int sock)
{
	char byte;
	struct iovec iov = { .iov_base = &byte, .iov_len = 1 };
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(sizeof(int))];
	} u;
	struct msghdr msg = {
		.msg_iov = &iov, .msg_iovlen = 1,
		.msg_control = u.buf, .msg_controllen = sizeof(u.buf),
	};
	struct cmsghdr *c;
	int fd;

	if (recvmsg(sock, &msg, MSG_CMSG_CLOEXEC) != 1)
		return -1;
	c = CMSG_FIRSTHDR(&msg);
	if (!c || c->cmsg_type != SCM_RIGHTS)
		return -1;
	memcpy(&fd, CMSG_DATA(c), sizeof(int));
	return fd;
}

/* ---- content and fd properties ---- */

static int t_export_content(void)
{
	size_t len = 16 * PAGE;
	uint8_t *user = map_anon(len), *view;
	long before = vmpin_kb();
	int fd, fl;

	ASSERT(user);
	fill(user, len, 1);
	ASSERT(vexport(dev, user, len, VMEMEXP_EXPORT_WRITE, &fd) == 0);
	ASSERT((fl = fcntl(fd, F_GETFD)) >= 0 && (fl & FD_CLOEXEC));
	ASSERT((fcntl(fd, F_GETFL) & O_ACCMODE) == O_RDWR);
	ASSERT(lseek(fd, 0, SEEK_END) == (off_t)len);
	ASSERT(vmpin_kb() == before + (long)(len / 1024));
	view = map_dmabuf(fd, len, PROT_READ | PROT_WRITE);
	ASSERT(view);
	ASSERT(memcmp(view, user, len) == 0);
	/* The same pages both ways: the producer's writes and the dma-buf's. */
	fill(user, len, 2);
	ASSERT(differs(view, len, 2) == -1);
	fill(view + PAGE, PAGE, 3);
	ASSERT(differs(user + PAGE, PAGE, 3) == -1);
	/* Offset mappings see the right pages. */
	munmap(view, len);
	view = mmap(NULL, 2 * PAGE, PROT_READ, MAP_SHARED, fd, 4 * PAGE);
	ASSERT(view != MAP_FAILED);
	ASSERT(memcmp(view, user + 4 * PAGE, 2 * PAGE) == 0);
	munmap(view, 2 * PAGE);
	/* A private mapping would stop following the producer: refused. */
	ASSERT(mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0) == MAP_FAILED && errno == EINVAL);
	close(fd);
	ASSERT(vmpin_kb() == before);
	munmap(user, len);
	return 0;
}

static int t_readonly_fd(void)
{
	size_t len = 4 * PAGE;
	uint8_t *user = map_anon(len), *view;
	int fd;

	ASSERT(user);
	fill(user, len, 4);
	ASSERT(vexport(dev, user, len, 0, &fd) == 0);
	ASSERT((fcntl(fd, F_GETFL) & O_ACCMODE) == O_RDONLY);
	ASSERT(mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) == MAP_FAILED);
	ASSERT(errno == EACCES);
	view = map_dmabuf(fd, len, PROT_READ);
	ASSERT(view);
	ASSERT(differs(view, len, 4) == -1);
	ASSERT(mprotect(view, len, PROT_READ | PROT_WRITE) == -1 && errno == EACCES);
	munmap(view, len);
	close(fd);
	munmap(user, len);
	return 0;
}

static int t_memfd_shared(void)
{
	size_t len = 8 * PAGE;
	int mfd = memfd_create("vmemexp-test", MFD_CLOEXEC), fd;
	uint8_t *user, *view;

	ASSERT(mfd >= 0);
	ASSERT(ftruncate(mfd, len) == 0);
	user = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	ASSERT(user != MAP_FAILED);
	fill(user, len, 6);
	ASSERT(vexport(dev, user, len, VMEMEXP_EXPORT_WRITE, &fd) == 0);
	view = map_dmabuf(fd, len, PROT_READ);
	ASSERT(view);
	ASSERT(differs(view, len, 6) == -1);
	munmap(view, len);
	close(fd);
	munmap(user, len);
	close(mfd);
	return 0;
}

/* ---- refused input ---- */

static int t_bad_args(void)
{
	uint8_t *user = map_anon(2 * PAGE);
	struct vmemexp_export e = { .addr = (uintptr_t)user, .len = PAGE };
	int before = count_fds();
	long pin = vmpin_kb();

	ASSERT(user);
	ASSERT(export_errno(user, PAGE, 0x2) == -EINVAL);
	ASSERT(export_errno(user, PAGE, ~0u) == -EINVAL);
	e.reserved[1] = 1;
	ASSERT(ioctl(dev, VMEMEXP_IOC_EXPORT, &e) == -1 && errno == EINVAL);
	ASSERT(ioctl(dev, VMEMEXP_IOC_EXPORT, NULL) == -1 && errno == EFAULT);
	ASSERT(ioctl(dev, _IOWR(VMEMEXP_IOC_MAGIC, 0xD1, struct vmemexp_export), &e) == -1);
	ASSERT(errno == ENOTTY);
	ASSERT(count_fds() == before && vmpin_kb() == pin);
	munmap(user, 2 * PAGE);
	return 0;
}

static int t_bad_unaligned(void)
{
	uint8_t *user = map_anon(2 * PAGE);

	ASSERT(user);
	ASSERT(export_errno(user + 1, PAGE, VMEMEXP_EXPORT_WRITE) == -EINVAL);
	ASSERT(export_errno(user + 64, PAGE, 0) == -EINVAL);
	ASSERT(export_errno(user, PAGE + 1, VMEMEXP_EXPORT_WRITE) == -EINVAL);
	ASSERT(export_errno(user, 100, VMEMEXP_EXPORT_WRITE) == -EINVAL);
	munmap(user, 2 * PAGE);
	return 0;
}

static int t_bad_zero_len(void)
{
	uint8_t *user = map_anon(PAGE);

	ASSERT(user);
	ASSERT(export_errno(user, 0, VMEMEXP_EXPORT_WRITE) == -EINVAL);
	ASSERT(export_errno(user, 0, 0) == -EINVAL);
	munmap(user, PAGE);
	return 0;
}

static int t_bad_overflow(void)
{
	ASSERT(export_errno((void *)(uintptr_t)-PAGE, 2 * PAGE, VMEMEXP_EXPORT_WRITE) == -EOVERFLOW);
	ASSERT(export_errno((void *)(16 * PAGE), (size_t)-PAGE, VMEMEXP_EXPORT_WRITE) == -EOVERFLOW);
	return 0;
}

static int t_bad_too_big(void)
{
	/* Above the max_size_mb module parameter (default 4096 MiB). */
	ASSERT(export_errno((void *)(16 * PAGE), 8ULL << 30, VMEMEXP_EXPORT_WRITE) == -E2BIG);
	return 0;
}

static int t_bad_kernel_addr(void)
{
	/* The last page of the address space is the kernel's everywhere. */
	ASSERT(export_errno((void *)(0UL - 2 * PAGE), PAGE, VMEMEXP_EXPORT_WRITE) == -EFAULT);
#ifdef __x86_64__
	/* A range that crosses the end of x86-64's 47-bit user space. */
	ASSERT(export_errno((void *)(0x0000800000000000UL - PAGE), 2 * PAGE, 0) == -EFAULT);
#endif
	return 0;
}

static int t_bad_hole(void)
{
	uint8_t *user = map_anon(3 * PAGE);
	long pin = vmpin_kb();
	int fds = count_fds();

	ASSERT(user);
	fill(user, 3 * PAGE, 7);
	ASSERT(munmap(user + PAGE, PAGE) == 0);
	ASSERT(export_errno(user, 3 * PAGE, VMEMEXP_EXPORT_WRITE) == -EFAULT);
	ASSERT(export_errno(user + PAGE, PAGE, 0) == -EFAULT);
	/* Nothing half-done stays behind. */
	ASSERT(vmpin_kb() == pin && count_fds() == fds);
	munmap(user, 3 * PAGE);
	return 0;
}

static int t_bad_readonly_mapping(void)
{
	uint8_t *ro = mmap(NULL, 2 * PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint8_t *none = mmap(NULL, PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint8_t *mixed = map_anon(2 * PAGE);
	long pin = vmpin_kb();

	ASSERT(ro != MAP_FAILED && none != MAP_FAILED && mixed);
	ASSERT(export_errno(ro, 2 * PAGE, VMEMEXP_EXPORT_WRITE) == -EACCES);
	/* Devices may write whatever the fd's mode: read-only memory is never exported. */
	ASSERT(export_errno(ro, 2 * PAGE, 0) == -EACCES);
	ASSERT(export_errno(none, PAGE, 0) == -EACCES);
	ASSERT(mprotect(mixed + PAGE, PAGE, PROT_READ) == 0);
	ASSERT(export_errno(mixed, 2 * PAGE, VMEMEXP_EXPORT_WRITE) == -EACCES);
	ASSERT(export_errno(mixed, PAGE, VMEMEXP_EXPORT_WRITE) == 0);
	ASSERT(vmpin_kb() == pin);
	munmap(ro, 2 * PAGE);
	munmap(none, PAGE);
	munmap(mixed, 2 * PAGE);
	return 0;
}

static int t_bad_pfnmap_dmabuf(void)
{
	size_t len = 4 * PAGE;
	uint8_t *user = map_anon(len), *view;
	int fd;

	ASSERT(user);
	ASSERT(vexport(dev, user, len, VMEMEXP_EXPORT_WRITE, &fd) == 0);
	view = map_dmabuf(fd, len, PROT_READ | PROT_WRITE);
	ASSERT(view);
	/* A dma-buf's own mapping is VM_PFNMAP: no struct pages to pin. */
	ASSERT(export_errno(view, len, VMEMEXP_EXPORT_WRITE) == -EOPNOTSUPP);
	munmap(view, len);
	close(fd);
	munmap(user, len);
	return 0;
}

/* ---- DRM helpers: find a node by driver name ---- */

static int open_drm(const char *driver, const char *prefix)
{
	char path[64], name[32];

	for (int i = 0; i < 256; i++) {
		struct drm_version v = { .name = name, .name_len = sizeof(name) - 1 };
		int fd;

		snprintf(path, sizeof(path), "/dev/dri/%s%d", prefix, i);
		fd = open(path, O_RDWR | O_CLOEXEC);
		if (fd < 0)
			continue;
		memset(name, 0, sizeof(name));
		if (!ioctl(fd, DRM_IOCTL_VERSION, &v) && !strcmp(name, driver))
			return fd;
		close(fd);
	}
	diag("no /dev/dri/%s* node of driver %s", prefix, driver);
	return -1;
}

static int t_bad_pfnmap_dumb(void)
{
	struct drm_mode_create_dumb c = { .width = 64, .height = 64, .bpp = 32 };
	struct drm_mode_map_dumb m = { 0 };
	struct drm_mode_destroy_dumb d = { 0 };
	int drm = open_drm("vkms", "card"), ret;
	void *p;

	ASSERT(drm >= 0);
	ASSERT(ioctl(drm, DRM_IOCTL_MODE_CREATE_DUMB, &c) == 0);
	m.handle = d.handle = c.handle;
	ASSERT(ioctl(drm, DRM_IOCTL_MODE_MAP_DUMB, &m) == 0);
	p = mmap(NULL, c.size, PROT_READ | PROT_WRITE, MAP_SHARED, drm, m.offset);
	ASSERT(p != MAP_FAILED);
	memset(p, 0x5a, c.size);
	ret = export_errno(p, c.size, VMEMEXP_EXPORT_WRITE);
	munmap(p, c.size);
	ioctl(drm, DRM_IOCTL_MODE_DESTROY_DUMB, &d);
	close(drm);
	if (ret != -EOPNOTSUPP)
		FAIL("export of a DRM dumb buffer mapping: %d, expected -EOPNOTSUPP", ret);
	return 0;
}

/* ---- RLIMIT_MEMLOCK ---- */

static int memlock_child(void *arg)
{
	size_t limit = 16 * PAGE;
	struct rlimit rl = { .rlim_cur = limit, .rlim_max = limit };
	uint8_t *user = map_anon(32 * PAGE);
	int fd1, fd2, ret;

	(void)arg;
	ASSERT(user);
	fill(user, 32 * PAGE, 8);
	ASSERT(setrlimit(RLIMIT_MEMLOCK, &rl) == 0);
	ASSERT(setgroups(0, NULL) == 0 && setgid(65534) == 0 && setuid(65534) == 0);
	ASSERT(geteuid() == 65534);
	/* dev was opened by root before: the fd is the capability, the limit is ours. */
	ASSERT(vexport(dev, user, 12 * PAGE, VMEMEXP_EXPORT_WRITE, &fd1) == 0);
	ret = vexport(dev, user + 12 * PAGE, 8 * PAGE, VMEMEXP_EXPORT_WRITE, &fd2);
	if (ret != -ENOMEM)
		FAIL("12 + 8 pages over a 16-page RLIMIT_MEMLOCK: %d, expected -ENOMEM", ret);
	ASSERT(vmpin_kb() == 12 * 4);
	ASSERT(export_errno(user, 17 * PAGE, VMEMEXP_EXPORT_WRITE) == -ENOMEM);
	ASSERT(vexport(dev, user + 12 * PAGE, 4 * PAGE, VMEMEXP_EXPORT_WRITE, &fd2) == 0);
	ASSERT(vmpin_kb() == 16 * 4);
	close(fd1);
	close(fd2);
	/* Released exports give the budget back. */
	ASSERT(vmpin_kb() == 0);
	ASSERT(vexport(dev, user, 16 * PAGE, VMEMEXP_EXPORT_WRITE, &fd1) == 0);
	close(fd1);
	return 0;
}

static int memlock_root_child(void *arg)
{
	struct rlimit rl = { .rlim_cur = PAGE, .rlim_max = PAGE };
	uint8_t *user = map_anon(32 * PAGE);
	int fd;

	(void)arg;
	ASSERT(user);
	ASSERT(setrlimit(RLIMIT_MEMLOCK, &rl) == 0);
	/* CAP_IPC_LOCK lifts the limit, the pin is still counted. */
	ASSERT(vexport(dev, user, 32 * PAGE, VMEMEXP_EXPORT_WRITE, &fd) == 0);
	ASSERT(vmpin_kb() == 32 * 4);
	close(fd);
	ASSERT(vmpin_kb() == 0);
	return 0;
}

static int t_memlock_limit(void)
{
	ASSERT(getuid() == 0);
	ASSERT(in_child(memlock_child, NULL) == 0);
	ASSERT(in_child(memlock_root_child, NULL) == 0);
	return 0;
}

/* ---- lifetime ---- */

static int t_munmap_after_export(void)
{
	size_t len = 64 * PAGE;
	uint8_t *user = map_anon(len), *view, *again;
	long pin = vmpin_kb();
	int fd;

	ASSERT(user);
	fill(user, len, 9);
	ASSERT(vexport(dev, user, len, VMEMEXP_EXPORT_WRITE, &fd) == 0);
	ASSERT(munmap(user, len) == 0);
	/* New memory at the same address is not what was exported. */
	again = mmap(user, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	ASSERT(again == user);
	fill(again, len, 10);
	view = map_dmabuf(fd, len, PROT_READ);
	ASSERT(view);
	ASSERT(differs(view, len, 9) == -1);
	ASSERT(vmpin_kb() == pin + (long)(len / 1024));
	/* The mapping alone keeps the dma-buf, and so the pin, alive. */
	close(fd);
	ASSERT(differs(view, len, 9) == -1);
	ASSERT(vmpin_kb() == pin + (long)(len / 1024));
	munmap(view, len);
	ASSERT(vmpin_kb() == pin);
	munmap(again, len);
	return 0;
}

/*
 * Heap memory freed after its export: the pages stay pinned, but the
 * allocator keeps them mapped and hands them out again, so holders of the
 * dma-buf see (and, through a writable export, change) later allocations.
 * This case pins that down: it is why vmemexport never exports memory its
 * frame does not own outright. The chunk comes from the brk heap (below
 * glibc's mmap threshold), and the same-size malloc() right after free()
 * gets it back.
 */
static int t_free_after_export(void)
{
	size_t len = 16 * PAGE;
	void *user = NULL, *other;
	uintptr_t freed;
	uint8_t *view;
	long pin = vmpin_kb();
	int fd;

	ASSERT(mallopt(M_MMAP_THRESHOLD, 64 << 20) == 1);
	ASSERT(posix_memalign(&user, PAGE, len) == 0);
	fill(user, len, 11);
	ASSERT(vexport(dev, user, len, VMEMEXP_EXPORT_WRITE, &fd) == 0);
	freed = (uintptr_t)user;
	free(user);
	other = malloc(len - 64);
	ASSERT(other);
	fill(other, len - 64, 12);
	view = map_dmabuf(fd, len, PROT_READ);
	ASSERT(view);
	if ((uintptr_t)other >= freed && (uintptr_t)other < freed + len) {
		size_t at = (uintptr_t)other - freed;

		diag("the allocator reused the freed, still pinned pages at +%zu", at);
		ASSERT(memcmp(view + at, other, 64) == 0);
	} else {
		FAIL("malloc did not reuse the freed chunk (%p, freed 0x%lx): the case proves nothing",
		     other, (unsigned long)freed);
	}
	munmap(view, len);
	close(fd);
	free(other);
	ASSERT(vmpin_kb() == pin);
	/* Memory the process unmaps, as an mmap()ed chunk, is not reused. */
	ASSERT(mallopt(M_MMAP_THRESHOLD, 128 * 1024) == 1);
	return 0;
}

static int owner_exits_child(void *arg)
{
	int sock = *(int *)arg;
	size_t len = 8 * PAGE;
	uint8_t *user = map_anon(len);
	int fd;

	ASSERT(user);
	fill(user, len, 13);
	ASSERT(vexport(dev, user, len, VMEMEXP_EXPORT_WRITE, &fd) == 0);
	ASSERT(send_fd(sock, fd) == 0);
	return 0;
}

static int t_owner_exits(void)
{
	int sv[2], fd;
	uint8_t *view;

	ASSERT(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0);
	ASSERT(in_child(owner_exits_child, &sv[1]) == 0);
	fd = recv_fd(sv[0]);
	close(sv[0]);
	close(sv[1]);
	ASSERT(fd >= 0);
	/* The exporting process is gone; its pages are still there. */
	view = map_dmabuf(fd, 8 * PAGE, PROT_READ);
	ASSERT(view);
	ASSERT(differs(view, 8 * PAGE, 13) == -1);
	munmap(view, 8 * PAGE);
	close(fd);
	return 0;
}

/* ---- across processes ---- */

struct share {
	int sock;
	size_t len;
	uint32_t seed;
};

static int share_child(void *arg)
{
	struct share *s = arg;
	int fd = recv_fd(s->sock);
	uint8_t *view;

	ASSERT(fd >= 0);
	ASSERT((fcntl(fd, F_GETFD) & FD_CLOEXEC));
	view = map_dmabuf(fd, s->len, PROT_READ);
	ASSERT(view);
	ASSERT(differs(view, s->len, s->seed) == -1);
	munmap(view, s->len);
	close(fd);
	return 0;
}

static int t_share_over_socket(void)
{
	struct share s = { .len = 32 * PAGE, .seed = 14 };
	uint8_t *user = map_anon(s.len);
	int sv[2], fd, ret;

	ASSERT(user);
	fill(user, s.len, s.seed);
	ASSERT(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0);
	ASSERT(vexport(dev, user, s.len, VMEMEXP_EXPORT_WRITE, &fd) == 0);
	ASSERT(send_fd(sv[0], fd) == 0);
	close(fd);
	/* The producer drops everything before the consumer looks. */
	munmap(user, s.len);
	s.sock = sv[1];
	ret = in_child(share_child, &s);
	close(sv[0]);
	close(sv[1]);
	return ret;
}

struct passed {
	int sock, ready[2], done[2];
	uint8_t *region;
	size_t len;
};

static int passed_child(void *arg)
{
	struct passed *p = arg;
	uint8_t *view;
	int devfd, fd;
	char c = 0;

	/* Our copy of the region, different from the parent's. */
	fill(p->region, p->len, 16);
	devfd = recv_fd(p->sock);
	ASSERT(devfd >= 0);
	ASSERT(vexport(devfd, p->region, p->len, VMEMEXP_EXPORT_WRITE, &fd) == 0);
	ASSERT(vmpin_kb() == (long)(p->len / 1024));
	view = map_dmabuf(fd, p->len, PROT_READ);
	ASSERT(view);
	ASSERT(differs(view, p->len, 16) == -1);
	ASSERT(write(p->ready[1], &c, 1) == 1);
	ASSERT(read(p->done[0], &c, 1) == 1);
	munmap(view, p->len);
	close(fd);
	return 0;
}

static int t_device_fd_passed(void)
{
	struct passed p = { .len = 8 * PAGE };
	long pin = vmpin_kb();
	int sv[2], devfd, status, ok = 0;
	pid_t pid;
	char c;

	p.region = map_anon(p.len);
	ASSERT(p.region);
	fill(p.region, p.len, 15);
	ASSERT(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0);
	ASSERT(pipe2(p.ready, O_CLOEXEC) == 0 && pipe2(p.done, O_CLOEXEC) == 0);
	p.sock = sv[1];
	pid = fork();
	ASSERT(pid >= 0);
	if (!pid)
		_exit(passed_child(&p) ? 1 : 0);
	/* Opened by the parent after the fork, handed over a socket. */
	devfd = open(DEV_PATH, O_RDWR | O_CLOEXEC);
	if (devfd >= 0 && send_fd(sv[0], devfd) == 0 && read(p.ready[0], &c, 1) == 1) {
		/* The child's export pinned and charged the child's memory, not ours. */
		ok = vmpin_kb() == pin && differs(p.region, p.len, 15) == -1;
		if (!ok)
			diag("parent VmPin %ld kB (was %ld) or parent memory changed", vmpin_kb(), pin);
	}
	c = 0;
	if (write(p.done[1], &c, 1) != 1)
		ok = 0;
	if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status))
		ok = 0;
	close(devfd);
	close(sv[0]);
	close(sv[1]);
	close(p.ready[0]);
	close(p.ready[1]);
	close(p.done[0]);
	close(p.done[1]);
	munmap(p.region, p.len);
	return ok ? 0 : -1;
}

static int t_fork_after_export(void)
{
	size_t len = 8 * PAGE;
	uint8_t *user = map_anon(len), *view;
	int fd, go[2], back[2], status;
	pid_t pid;
	char c = 0;

	ASSERT(user);
	fill(user, len, 17);
	ASSERT(vexport(dev, user, len, VMEMEXP_EXPORT_WRITE, &fd) == 0);
	view = map_dmabuf(fd, len, PROT_READ);
	ASSERT(view);
	ASSERT(pipe2(go, O_CLOEXEC) == 0 && pipe2(back, O_CLOEXEC) == 0);
	pid = fork();
	ASSERT(pid >= 0);
	if (!pid) {
		/* Pinned pages are copied for the child at fork: its writes stay its own. */
		fill(user, len, 18);
		_exit(write(back[1], &c, 1) == 1 && read(go[0], &c, 1) == 1 &&
		      differs(user, len, 18) == -1 ? 0 : 1);
	}
	ASSERT(read(back[0], &c, 1) == 1);
	if (differs(view, len, 17) != -1)
		FAIL("the child's writes reached the parent's export");
	/* The parent still owns the pinned pages: its writes reach the dma-buf. */
	fill(user, len, 19);
	ASSERT(differs(view, len, 19) == -1);
	ASSERT(write(go[1], &c, 1) == 1);
	ASSERT(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && !WEXITSTATUS(status));
	close(go[0]);
	close(go[1]);
	close(back[0]);
	close(back[1]);
	munmap(view, len);
	close(fd);
	munmap(user, len);
	return 0;
}

/* ---- volume ---- */

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int t_cycles(void)
{
	const char *env = getenv("VMEMEXP_CYCLES");
	long n = env ? atol(env) : 100000, i;
	uint8_t *user = map_anon(PAGE);
	long pin = vmpin_kb();
	int fds = count_fds(), fd;
	double t0 = now(), dt;

	ASSERT(user && n > 0);
	fill(user, PAGE, 20);
	for (i = 0; i < n; i++) {
		if (vexport(dev, user, PAGE, VMEMEXP_EXPORT_WRITE, &fd))
			FAIL("cycle %ld: %s", i, strerror(errno));
		close(fd);
	}
	dt = now() - t0;
	diag("%ld export/release cycles of one page in %.2f s (%.1f us each)", n, dt, dt * 1e6 / n);
	ASSERT(vmpin_kb() == pin);
	ASSERT(count_fds() == fds);
	munmap(user, PAGE);
	return 0;
}

#define THREADS 8
#define THREAD_ROUNDS 200

static void *thread_main(void *arg)
{
	uintptr_t id = (uintptr_t)arg;
	size_t len = (1 + id % 4) * PAGE;
	uint8_t *user = map_anon(len), *view;
	uintptr_t bad = 0;
	int fd;

	if (!user)
		return (void *)1;
	for (int r = 0; r < THREAD_ROUNDS && !bad; r++) {
		uint32_t seed = (uint32_t)(id << 16 | r);

		fill(user, len, seed);
		if (vexport(dev, user, len, VMEMEXP_EXPORT_WRITE, &fd)) {
			bad = 2;
			break;
		}
		view = map_dmabuf(fd, len, PROT_READ);
		if (!view || differs(view, len, seed) != -1)
			bad = 3;
		if (view)
			munmap(view, len);
		close(fd);
	}
	munmap(user, len);
	return (void *)bad;
}

static int t_threads(void)
{
	pthread_t t[THREADS];
	long pin = vmpin_kb();
	int fds = count_fds(), failed = 0;

	for (uintptr_t i = 0; i < THREADS; i++)
		ASSERT(pthread_create(&t[i], NULL, thread_main, (void *)i) == 0);
	for (int i = 0; i < THREADS; i++) {
		void *ret;

		pthread_join(t[i], &ret);
		if (ret) {
			diag("thread %d failed (%ld)", i, (long)(uintptr_t)ret);
			failed++;
		}
	}
	ASSERT(!failed);
	ASSERT(vmpin_kb() == pin && count_fds() == fds);
	return 0;
}

/* ---- holders and exporters are adversaries ---- */

struct escape {
	int sock;	/* to the parent */
	size_t len;	/* each child's export */
};

static int escape_child(void *arg)
{
	struct escape *e = arg;
	uint8_t *user = map_anon(e->len);
	int fd, ret;

	if (!user)
		return -1;
	fill(user, e->len, 40);
	ret = vexport(dev, user, e->len, VMEMEXP_EXPORT_WRITE, &fd);
	if (ret) {
		/* The refusal's errno, for the parent. */
		int err = -ret;

		return write(e->sock, &err, sizeof(err)) == sizeof(err) ? 0 : -1;
	}
	return send_fd(e->sock, fd);
}

/*
 * The attack on the memlock bound: children of one unprivileged user each
 * export up to RLIMIT_MEMLOCK, pass the dma-buf to the parent and exit; the
 * parent keeps every dma-buf alive with a mapping. The charge must follow the
 * user, not the exiting mm: the second child is refused with ENOMEM.
 */
static int escape_parent(void *arg)
{
	size_t limit = 8 << 20, each = 6 << 20, held = 0;
	struct rlimit rl = { .rlim_cur = limit, .rlim_max = limit };
	void *views[12];
	int refused = 0, exported = 0, sv[2];

	(void)arg;
	ASSERT(setrlimit(RLIMIT_MEMLOCK, &rl) == 0);
	ASSERT(setgroups(0, NULL) == 0 && setgid(65534) == 0 && setuid(65534) == 0);
	ASSERT(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv) == 0);
	for (int i = 0; i < 12; i++) {
		struct escape e = { .sock = sv[1], .len = each };
		int fd, err;
		struct iovec iov = { .iov_base = &err, .iov_len = sizeof(err) };
		union {
			struct cmsghdr h;
			char buf[CMSG_SPACE(sizeof(int))];
		} u = { 0 };
		struct msghdr msg = {
			.msg_iov = &iov, .msg_iovlen = 1,
			.msg_control = u.buf, .msg_controllen = sizeof(u.buf),
		};

		ASSERT(in_child(escape_child, &e) == 0);
		ASSERT(recvmsg(sv[0], &msg, 0) > 0);
		if (msg.msg_controllen && CMSG_FIRSTHDR(&msg)) {
			memcpy(&fd, CMSG_DATA(CMSG_FIRSTHDR(&msg)), sizeof(int));
			views[exported] = map_dmabuf(fd, each, PROT_READ);
			ASSERT(views[exported]);
			close(fd);
			exported++;
			held += each;
		} else {
			if (err != ENOMEM && err != EAGAIN)
				FAIL("child %d: errno %d, expected ENOMEM", i, err);
			refused++;
		}
	}
	diag("12 children of one user, each exporting %zu MiB under an %zu MiB RLIMIT_MEMLOCK: %d exported (%zu MiB held), %d refused",
	     each >> 20, limit >> 20, exported, held >> 20, refused);
	if (held > limit)
		FAIL("the user holds %zu MiB pinned over its %zu MiB limit", held >> 20, limit >> 20);
	ASSERT(exported == 1 && refused == 11);
	/* Released dma-bufs give the user's budget back. */
	for (int i = 0; i < exported; i++)
		munmap(views[i], each);
	{
		struct escape e = { .sock = sv[1], .len = each };
		int fd = -1;

		ASSERT(in_child(escape_child, &e) == 0);
		fd = recv_fd(sv[0]);
		ASSERT(fd >= 0);
		close(fd);
	}
	close(sv[0]);
	close(sv[1]);
	return 0;
}

static int t_memlock_survives_exit(void)
{
	ASSERT(getuid() == 0);
	return in_child(escape_parent, NULL);
}

static int read_param(const char *name, char *buf, size_t len)
{
	char path[128];
	int fd, n;

	snprintf(path, sizeof(path), "/sys/module/vmemexp/parameters/%s", name);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	n = read(fd, buf, len - 1);
	close(fd);
	if (n < 0)
		return -errno;
	buf[n] = 0;
	return 0;
}

static int write_param(const char *name, const char *value)
{
	char path[128];
	int fd, ok;

	snprintf(path, sizeof(path), "/sys/module/vmemexp/parameters/%s", name);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	ok = write(fd, value, strlen(value)) == (ssize_t)strlen(value);
	close(fd);
	return ok ? 0 : -EIO;
}

static int t_global_cap(void)
{
	size_t len = 2 << 20;
	uint8_t *user = map_anon(len);
	char old[32];
	int fd = -1, over, within;

	ASSERT(user);
	ASSERT(read_param("max_total_mb", old, sizeof(old)) == 0 && atoi(old) == 0);
	ASSERT(write_param("max_total_mb", "1") == 0);
	/* Root, CAP_IPC_LOCK and all: the administrator's cap binds everyone. */
	over = export_errno(user, len, VMEMEXP_EXPORT_WRITE);
	within = vexport(dev, user, len / 2, VMEMEXP_EXPORT_WRITE, &fd);
	ASSERT(write_param("max_total_mb", "0") == 0);
	if (fd >= 0)
		close(fd);
	if (over != -ENOSPC)
		FAIL("2 MiB under a 1 MiB max_total_mb: %d, expected -ENOSPC", over);
	ASSERT(within == 0);
	ASSERT(export_errno(user, len, VMEMEXP_EXPORT_WRITE) == 0);
	munmap(user, len);
	return 0;
}

static int fdinfo_line(int fd, const char *key, char *out, size_t len)
{
	char path[64], line[256];
	FILE *f;
	int found = -1;

	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	f = fopen(path, "re");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		if (!strncmp(line, key, strlen(key)) && line[strlen(key)] == ':') {
			char *v = line + strlen(key) + 1;

			v += strspn(v, " \t");
			v[strcspn(v, "\n")] = 0;
			snprintf(out, len, "%s", v);
			found = 0;
			break;
		}
	}
	fclose(f);
	return found;
}

static int t_named_after_exporter(void)
{
	uint8_t *user = map_anon(PAGE);
	char name[128], want[128], comm[32] = "", exp[64];
	FILE *f = fopen("/proc/self/comm", "re");
	int fd;

	ASSERT(user && f);
	ASSERT(fgets(comm, sizeof(comm), f));
	fclose(f);
	comm[strcspn(comm, "\n")] = 0;
	ASSERT(vexport(dev, user, PAGE, 0, &fd) == 0);
	ASSERT(fdinfo_line(fd, "exp_name", exp, sizeof(exp)) == 0 && !strcmp(exp, "vmemexp"));
	ASSERT(fdinfo_line(fd, "name", name, sizeof(name)) == 0);
	snprintf(want, sizeof(want), "vmemexp:%d:%s", getpid(), comm);
	if (strcmp(name, want))
		FAIL("fdinfo name '%s', expected '%s'", name, want);
	close(fd);
	munmap(user, PAGE);
	return 0;
}

static int t_device_fd_readonly(void)
{
	uint8_t *user = map_anon(PAGE);
	int ro = open(DEV_PATH, O_RDONLY | O_CLOEXEC), fd;

	ASSERT(user && ro >= 0);
	/* Pinning memory takes the device's write permission. */
	ASSERT(vexport(ro, user, PAGE, VMEMEXP_EXPORT_WRITE, &fd) == -EBADF);
	ASSERT(vexport(ro, user, PAGE, 0, &fd) == -EBADF);
	close(ro);
	munmap(user, PAGE);
	return 0;
}

static int open_importer(int dmabuf)
{
	int imp = open("/dev/vmemexp_importer", O_RDWR | O_CLOEXEC);

	if (imp < 0) {
		diag("open /dev/vmemexp_importer: %s (load selftests/importer's module)", strerror(errno));
		return -1;
	}
	if (ioctl(imp, VMEMEXP_IMPORTER_IOC_IMPORT, &dmabuf)) {
		diag("importer: import: %s", strerror(errno));
		close(imp);
		return -1;
	}
	return imp;
}

/*
 * The attack on read-only exports: a driver's mmap of an imported object
 * reaches the exporter through dma_buf_mmap(), which does not check the
 * dma-buf fd's mode. A writable mapping of an O_RDONLY export must be
 * refused there too, and a read-only one must not become writable.
 */
static int t_importer_mmap_readonly(void)
{
	size_t len = 4 * PAGE;
	uint8_t *user = map_anon(len), *view;
	int fd, imp;

	ASSERT(user);
	fill(user, len, 41);
	ASSERT(vexport(dev, user, len, 0, &fd) == 0);
	imp = open_importer(fd);
	ASSERT(imp >= 0);
	view = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, imp, 0);
	if (view != MAP_FAILED) {
		view[0] ^= 0xff;
		FAIL("an importer mapped a read-only export writable; the producer's byte 0 is now 0x%02x",
		     user[0]);
	}
	ASSERT(errno == EACCES);
	view = mmap(NULL, len, PROT_READ, MAP_SHARED, imp, 0);
	ASSERT(view != MAP_FAILED);
	ASSERT(differs(view, len, 41) == -1);
	ASSERT(mprotect(view, len, PROT_READ | PROT_WRITE) == -1 && errno == EACCES);
	munmap(view, len);
	/* A writable export is writable through the importer too. */
	close(imp);
	close(fd);
	ASSERT(vexport(dev, user, len, VMEMEXP_EXPORT_WRITE, &fd) == 0);
	imp = open_importer(fd);
	ASSERT(imp >= 0);
	view = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, imp, 0);
	ASSERT(view != MAP_FAILED);
	fill(view, PAGE, 42);
	ASSERT(differs(user, PAGE, 42) == -1);
	munmap(view, len);
	close(imp);
	close(fd);
	munmap(user, len);
	return 0;
}

static int t_importer_double_map(void)
{
	uint8_t *user = map_anon(4 * PAGE);
	__u32 dir = VMEMEXP_IMPORTER_TO_DEVICE;
	int fd, imp;

	ASSERT(user);
	ASSERT(vexport(dev, user, 4 * PAGE, 0, &fd) == 0);
	imp = open_importer(fd);
	ASSERT(imp >= 0);
	ASSERT(ioctl(imp, VMEMEXP_IMPORTER_IOC_MAP, &dir) == 0);
	/* One table per attachment: mapping it again before the unmap is refused. */
	if (ioctl(imp, VMEMEXP_IMPORTER_IOC_MAP, &dir) == 0)
		FAIL("a second map of the same attachment succeeded (it re-maps the table)");
	ASSERT(errno == EBUSY);
	ASSERT(ioctl(imp, VMEMEXP_IMPORTER_IOC_UNMAP) == 0);
	ASSERT(ioctl(imp, VMEMEXP_IMPORTER_IOC_MAP, &dir) == 0);
	close(imp);
	close(fd);
	munmap(user, 4 * PAGE);
	return 0;
}

/*
 * The DMA API debugging's own count of the errors it found, or -1 without
 * CONFIG_DMA_API_DEBUG (or debugfs). It counts every error, where the log
 * shows only the first of each boot unless all_errors is set.
 */
static long dma_api_errors(void)
{
	FILE *f = fopen("/sys/kernel/debug/dma-api/error_count", "re");
	long n = -1;

	if (f) {
		if (fscanf(f, "%ld", &n) != 1)
			n = -1;
		fclose(f);
	}
	return n;
}

/* Lines of the kernel log that name the DMA API's checks, from now on. */
static int kmsg_open(void)
{
	int fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK | O_CLOEXEC);

	if (fd >= 0)
		lseek(fd, 0, SEEK_END);
	return fd;
}

static int kmsg_count(int fd, const char *what)
{
	char rec[2048];
	int n = 0;
	ssize_t r;

	while ((r = read(fd, rec, sizeof(rec) - 1)) > 0 || (r < 0 && errno == EPIPE)) {
		if (r <= 0)
			continue;
		rec[r] = 0;
		if (strstr(rec, what)) {
			diag("kernel: %.*s", (int)strcspn(rec, "\n"), rec);
			n++;
		}
	}
	return n;
}

/*
 * CPU access with a device mapping in place: every sync must use the
 * direction the importer mapped with. Under CONFIG_DMA_API_DEBUG a sync in
 * another direction is reported ("DMA-API: ... different direction"), which
 * fails this case; elsewhere it checks that the syncs succeed.
 */
static int t_dma_buf_sync(void)
{
	size_t len = 4 * PAGE;
	uint8_t *user = map_anon(len);
	__u32 dirs[] = { VMEMEXP_IMPORTER_TO_DEVICE, VMEMEXP_IMPORTER_FROM_DEVICE,
			 VMEMEXP_IMPORTER_BIDIRECTIONAL };
	int fd, imp, kmsg = kmsg_open(), splats;
	long errors = dma_api_errors();

	ASSERT(user && kmsg >= 0);
	ASSERT(vexport(dev, user, len, VMEMEXP_EXPORT_WRITE, &fd) == 0);
	for (size_t i = 0; i < ARRAY_SIZE(dirs); i++) {
		imp = open_importer(fd);
		ASSERT(imp >= 0);
		ASSERT(ioctl(imp, VMEMEXP_IMPORTER_IOC_MAP, &dirs[i]) == 0);
		ASSERT(dmabuf_sync(fd, DMA_BUF_SYNC_START | DMA_BUF_SYNC_RW) == 0);
		fill(user, len, 5);
		ASSERT(dmabuf_sync(fd, DMA_BUF_SYNC_END | DMA_BUF_SYNC_RW) == 0);
		ASSERT(dmabuf_sync(fd, DMA_BUF_SYNC_START | DMA_BUF_SYNC_READ) == 0);
		ASSERT(dmabuf_sync(fd, DMA_BUF_SYNC_END | DMA_BUF_SYNC_READ) == 0);
		ASSERT(dmabuf_sync(fd, DMA_BUF_SYNC_START | DMA_BUF_SYNC_WRITE) == 0);
		ASSERT(dmabuf_sync(fd, DMA_BUF_SYNC_END | DMA_BUF_SYNC_WRITE) == 0);
		close(imp);
	}
	ASSERT(dmabuf_sync(fd, 0x80) == -EINVAL);
	splats = kmsg_count(kmsg, "DMA-API");
	close(kmsg);
	if (splats)
		FAIL("%d DMA-API debug reports during CPU syncs", splats);
	if (errors >= 0)
		errors = dma_api_errors() - errors;
	if (errors > 0)
		FAIL("the DMA API debugging counted %ld errors during CPU syncs", errors);
	close(fd);
	munmap(user, len);
	return 0;
}

/* One CPU fault maps a window of pages, not one page: count the faults. */
static int t_fault_around(void)
{
	size_t len = 8 << 20, npages = len / PAGE;
	uint8_t *user = map_anon(len), *view;
	struct rusage before, after;
	uint32_t sum = 0, want = 0;
	long faults;
	int fd;

	ASSERT(user);
	fill(user, len, 43);
	ASSERT(vexport(dev, user, len, 0, &fd) == 0);
	view = map_dmabuf(fd, len, PROT_READ);
	ASSERT(view);
	ASSERT(getrusage(RUSAGE_SELF, &before) == 0);
	for (size_t i = 0; i < len; i += PAGE)
		sum += view[i];
	ASSERT(getrusage(RUSAGE_SELF, &after) == 0);
	for (size_t i = 0; i < len; i += PAGE)
		want += user[i];
	ASSERT(sum == want);
	faults = after.ru_minflt - before.ru_minflt;
	diag("reading %zu pages of a mapped export took %ld faults", npages, faults);
	if (faults > (long)(npages / 64))
		FAIL("%ld faults for %zu pages: expected at most one per 64", faults, npages);
	ASSERT(differs(view, len, 43) == -1);
	munmap(view, len);
	close(fd);
	munmap(user, len);
	return 0;
}

static int t_mremap_and_past_end(void)
{
	size_t len = 4 * PAGE;
	uint8_t *user = map_anon(len), *view, *grown;
	int fd, imp;

	ASSERT(user);
	fill(user, len, 44);
	ASSERT(vexport(dev, user, len, VMEMEXP_EXPORT_WRITE, &fd) == 0);
	/* A mapping past the end of the dma-buf, through the fd or an importer. */
	ASSERT(mmap(NULL, len + PAGE, PROT_READ, MAP_SHARED, fd, 0) == MAP_FAILED);
	ASSERT(mmap(NULL, PAGE, PROT_READ, MAP_SHARED, fd, len) == MAP_FAILED);
	imp = open_importer(fd);
	ASSERT(imp >= 0);
	ASSERT(mmap(NULL, 2 * PAGE, PROT_READ, MAP_SHARED, imp, 3 * PAGE) == MAP_FAILED);
	close(imp);
	/* Growing a mapping would fault past the end: VM_DONTEXPAND refuses it. */
	view = map_dmabuf(fd, len, PROT_READ);
	ASSERT(view);
	grown = mremap(view, len, 2 * len, MREMAP_MAYMOVE);
	if (grown != MAP_FAILED)
		FAIL("mremap grew a mapping of a %zu-byte export to %zu bytes", len, 2 * len);
	ASSERT(differs(view, len, 44) == -1);
	/* Shrinking is fine. */
	ASSERT(mremap(view, len, PAGE, 0) == view);
	munmap(view, PAGE);
	close(fd);
	munmap(user, len);
	return 0;
}

/* ---- memory of every kind: what may be pinned and what may not ---- */

static const char *ext4_dir = "/tmp/vmemexp-ext4";
static char ext4_image[512];

/* An ext4 filesystem on a loop device over a memfd copy of the image. */
static int ext4_mount(void)
{
	static int mounted;
	char loop[32], buf[65536];
	int img, mfd, ctl, lfd, n;
	ssize_t r;

	if (mounted)
		return 0;
	img = open(ext4_image, O_RDONLY | O_CLOEXEC);
	if (img < 0)
		FAIL("open %s: %s (tests/vm/setup module makes it)", ext4_image, strerror(errno));
	mfd = memfd_create("vmemexp-ext4", MFD_CLOEXEC);
	ASSERT(mfd >= 0);
	while ((r = read(img, buf, sizeof(buf))) > 0)
		ASSERT(write(mfd, buf, r) == r);
	close(img);
	ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
	ASSERT(ctl >= 0);
	n = ioctl(ctl, LOOP_CTL_GET_FREE);
	close(ctl);
	ASSERT(n >= 0);
	snprintf(loop, sizeof(loop), "/dev/loop%d", n);
	lfd = open(loop, O_RDWR | O_CLOEXEC);
	ASSERT(lfd >= 0);
	ASSERT(ioctl(lfd, LOOP_SET_FD, mfd) == 0);
	close(mfd);
	mkdir(ext4_dir, 0700);
	if (mount(loop, ext4_dir, "ext4", 0, NULL))
		FAIL("mount %s (ext4) on %s: %s", loop, ext4_dir, strerror(errno));
	mounted = 1;
	return 0;
}

/* A file of len bytes on ext4, filled with seed's pattern. */
static int ext4_file(const char *name, size_t len, uint32_t seed)
{
	char path[256];
	void *p;
	int fd;

	if (ext4_mount())
		return -1;
	snprintf(path, sizeof(path), "%s/%s", ext4_dir, name);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0 || ftruncate(fd, len))
		FAIL("create %s: %s", path, strerror(errno));
	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	ASSERT(p != MAP_FAILED);
	fill(p, len, seed);
	ASSERT(msync(p, len, MS_SYNC) == 0);
	munmap(p, len);
	return fd;
}

static int t_ext4_shared_refused(void)
{
	size_t len = 4 * PAGE;
	int ffd = ext4_file("shared", len, 45);
	uint8_t *user;
	long pin = vmpin_kb();

	ASSERT(ffd >= 0);
	user = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, ffd, 0);
	ASSERT(user != MAP_FAILED);
	ASSERT(export_errno(user, len, VMEMEXP_EXPORT_WRITE) == -EOPNOTSUPP);
	ASSERT(export_errno(user, len, 0) == -EOPNOTSUPP);
	ASSERT(vmpin_kb() == pin);
	munmap(user, len);
	close(ffd);
	return 0;
}

/* A private file mapping is exported as the private copy, never the file. */
static int t_ext4_private_cow(void)
{
	size_t len = 4 * PAGE;
	int ffd = ext4_file("private", len, 46), fd;
	uint8_t *user, *view, *file;

	ASSERT(ffd >= 0);
	user = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE, ffd, 0);
	ASSERT(user != MAP_FAILED);
	ASSERT(differs(user, len, 46) == -1);
	ASSERT(vexport(dev, user, len, VMEMEXP_EXPORT_WRITE, &fd) == 0);
	view = map_dmabuf(fd, len, PROT_READ | PROT_WRITE);
	ASSERT(view);
	ASSERT(differs(view, len, 46) == -1);
	fill(view, len, 47);
	/* The process's private copy changed; the file did not. */
	ASSERT(differs(user, len, 47) == -1);
	file = mmap(NULL, len, PROT_READ, MAP_SHARED, ffd, 0);
	ASSERT(file != MAP_FAILED);
	ASSERT(differs(file, len, 46) == -1);
	munmap(file, len);
	munmap(view, len);
	close(fd);
	munmap(user, len);
	close(ffd);
	return 0;
}

struct race {
	uint8_t *tail;
	int ffd;
	/* __atomic: 1 while an export runs, 0 once the swap is done; 2 stops. */
	int go;
	long delay_us;
};

/*
 * On each round, once the export has started, waits a while and maps the
 * file over the range's last page: after the module's VMA check, while it
 * pins the 64 MiB before that page.
 */
static void *race_swapper(void *arg)
{
	struct race *r = arg;
	int go;

	while ((go = __atomic_load_n(&r->go, __ATOMIC_ACQUIRE)) != 2) {
		struct timespec ts = { 0, 0 };

		if (go != 1)
			continue;
		ts.tv_nsec = __atomic_load_n(&r->delay_us, __ATOMIC_RELAXED) * 1000;
		nanosleep(&ts, NULL);
		mmap(r->tail, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, r->ffd, 0);
		__atomic_store_n(&r->go, 0, __ATOMIC_RELEASE);
	}
	return NULL;
}

/*
 * The attack on the VMA check: a second thread maps a file of a disk
 * filesystem over the range after vmemexp checked it. The range is 64 MiB
 * of anonymous memory and one more page, which the module pins in 64 MiB
 * chunks; while it pins the head, the other thread maps a file on ext4 over
 * the last page, after a delay that varies from round to round. No export
 * may ever hold the file's page cache: an export that succeeds shows
 * anonymous memory (zeros) in its last page, never the file's pattern.
 * Before Linux 6.5 GUP does not refuse such long-term pins itself.
 */
static int t_race_file_pin(void)
{
	size_t head = 64 << 20, len = head + PAGE;
	const char *env = getenv("VMEMEXP_RACE_ROUNDS");
	int rounds, exported = 0, pagecache = 0, refused = 0, other = 0, major, minor;
	struct race r = { 0 };
	struct utsname u;
	uint8_t *range;
	pthread_t t;

	/* Where GUP would pin the file itself (before 6.5), a thousand rounds. */
	ASSERT(uname(&u) == 0 && sscanf(u.release, "%d.%d", &major, &minor) == 2);
	rounds = env ? atoi(env) : major * 100 + minor < 605 ? 1000 : 200;

	r.ffd = ext4_file("race", PAGE, 48);
	ASSERT(r.ffd >= 0);
	range = map_anon(len);
	ASSERT(range);
	memset(range, 0, head);
	r.tail = range + head;
	ASSERT(pthread_create(&t, NULL, race_swapper, &r) == 0);
	for (int i = 0; i < rounds; i++) {
		int fd, ret;
		uint8_t *last;

		ASSERT(mmap(r.tail, PAGE, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == r.tail);
		__atomic_store_n(&r.delay_us, 100 + (i * 397) % 8000, __ATOMIC_RELAXED);
		__atomic_store_n(&r.go, 1, __ATOMIC_RELEASE);
		ret = vexport(dev, range, len, 0, &fd);
		while (__atomic_load_n(&r.go, __ATOMIC_ACQUIRE))
			;
		if (ret == -EOPNOTSUPP || ret == -EFAULT || ret == -EACCES) {
			refused++;
			continue;
		}
		if (ret) {
			other++;
			continue;
		}
		exported++;
		last = mmap(NULL, PAGE, PROT_READ, MAP_SHARED, fd, head);
		if (last != MAP_FAILED && differs(last, PAGE, 48) == -1)
			pagecache++;
		if (last != MAP_FAILED)
			munmap(last, PAGE);
		close(fd);
	}
	__atomic_store_n(&r.go, 2, __ATOMIC_RELEASE);
	pthread_join(t, NULL);
	munmap(range, len);
	close(r.ffd);
	diag("%d rounds: %d exports of anonymous memory, %d of the file's page cache, %d refused, %d other errors",
	     rounds, exported - pagecache, pagecache, refused, other);
	if (pagecache)
		FAIL("%d exports pinned page cache of a file on ext4", pagecache);
	ASSERT(!other);
	return 0;
}

static int t_hugetlb(void)
{
	size_t len = 2 << 20;
	int sys = open("/proc/sys/vm/nr_hugepages", O_RDWR | O_CLOEXEC), fd;
	char old[32] = "0";
	uint8_t *user, *view;
	ssize_t n;

	ASSERT(sys >= 0);
	n = read(sys, old, sizeof(old) - 1);
	ASSERT(n > 0);
	old[n] = 0;
	ASSERT(pwrite(sys, "4", 1, 0) == 1);
	user = mmap(NULL, len, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
	if (user == MAP_FAILED) {
		pwrite(sys, old, strlen(old), 0);
		FAIL("no 2 MiB huge page: %s", strerror(errno));
	}
	fill(user, len, 49);
	ASSERT(vexport(dev, user, len, VMEMEXP_EXPORT_WRITE, &fd) == 0);
	view = map_dmabuf(fd, len, PROT_READ);
	ASSERT(view);
	ASSERT(differs(view, len, 49) == -1);
	munmap(view, len);
	close(fd);
	munmap(user, len);
	ASSERT(pwrite(sys, old, strlen(old), 0) == (ssize_t)strlen(old));
	close(sys);
	return 0;
}

/* ---- real importers ---- */

static int t_prime_vgem(void)
{
	size_t len = 16 * PAGE;
	uint8_t *user = map_anon(len), *view;
	struct drm_prime_handle h = { .flags = 0 }, back = { .flags = DRM_CLOEXEC };
	struct drm_gem_close gc = { 0 };
	int drm = open_drm("vgem", "renderD"), fd;
	struct stat a, b;

	ASSERT(user && drm >= 0);
	fill(user, len, 21);
	ASSERT(vexport(dev, user, len, VMEMEXP_EXPORT_WRITE, &fd) == 0);
	h.fd = fd;
	/* vgem attaches and maps (dma_map_sgtable) on import. */
	if (ioctl(drm, DRM_IOCTL_PRIME_FD_TO_HANDLE, &h))
		FAIL("vgem PRIME import: %s", strerror(errno));
	ASSERT(h.handle);
	/* What vgem holds is our dma-buf, with our bytes. */
	back.handle = h.handle;
	ASSERT(ioctl(drm, DRM_IOCTL_PRIME_HANDLE_TO_FD, &back) == 0);
	ASSERT(fstat(fd, &a) == 0 && fstat(back.fd, &b) == 0);
	ASSERT(a.st_ino == b.st_ino && a.st_dev == b.st_dev);
	view = map_dmabuf(back.fd, len, PROT_READ);
	ASSERT(view);
	ASSERT(differs(view, len, 21) == -1);
	fill(user, len, 22);
	ASSERT(differs(view, len, 22) == -1);
	munmap(view, len);
	close(back.fd);
	gc.handle = h.handle;
	ASSERT(ioctl(drm, DRM_IOCTL_GEM_CLOSE, &gc) == 0);
	close(fd);
	close(drm);
	munmap(user, len);
	return 0;
}

/* The first connected connector's 640x480 mode, its CRTC. */
static int vkms_pipe(int drm, uint32_t *conn_id, uint32_t *crtc_id,
		     struct drm_mode_modeinfo *mode)
{
	uint32_t crtcs[8], conns[8], encs[8];
	struct drm_mode_card_res res = {
		.crtc_id_ptr = (uintptr_t)crtcs, .count_crtcs = 8,
		.connector_id_ptr = (uintptr_t)conns, .count_connectors = 8,
		.encoder_id_ptr = (uintptr_t)encs, .count_encoders = 8,
	};

	ASSERT(ioctl(drm, DRM_IOCTL_MODE_GETRESOURCES, &res) == 0);
	ASSERT(res.count_crtcs > 0 && res.count_crtcs <= 8 && res.count_connectors <= 8);
	for (uint32_t i = 0; i < res.count_connectors; i++) {
		struct drm_mode_modeinfo modes[64];
		struct drm_mode_get_connector c = { .connector_id = conns[i] };

		if (ioctl(drm, DRM_IOCTL_MODE_GETCONNECTOR, &c))
			continue;
		if (c.connection != 1 || !c.count_modes)
			continue;
		if (c.count_modes > 64)
			c.count_modes = 64;
		c.modes_ptr = (uintptr_t)modes;
		c.count_props = 0;
		c.count_encoders = 0;
		if (ioctl(drm, DRM_IOCTL_MODE_GETCONNECTOR, &c))
			continue;
		for (uint32_t m = 0; m < c.count_modes && m < 64; m++) {
			if (modes[m].hdisplay == 640 && modes[m].vdisplay == 480) {
				*mode = modes[m];
				*conn_id = conns[i];
				*crtc_id = crtcs[0];
				return 0;
			}
		}
	}
	FAIL("no connected vkms connector with a 640x480 mode");
}

static int set_crtc(int drm, uint32_t crtc_id, uint32_t conn,
		    const struct drm_mode_modeinfo *mode, uint32_t fb_id)
{
	struct drm_mode_crtc c = { .crtc_id = crtc_id, .fb_id = fb_id };

	if (fb_id) {
		c.set_connectors_ptr = (uintptr_t)&conn;
		c.count_connectors = 1;
		c.mode = *mode;
		c.mode_valid = 1;
	}
	return ioctl(drm, DRM_IOCTL_MODE_SETCRTC, &c) ? -errno : 0;
}

/*
 * The CRC vkms computes over what it composed (debugfs crtc-0/crc): the
 * pixels it read from the plane's framebuffer through its vmap.
 */
static int vkms_crc(int drm, uint32_t *crc)
{
	char dir[96], path[128], line[64];
	uint32_t frame, value = 0;
	struct stat st;
	int ctl, data, n = 0;

	ASSERT(fstat(drm, &st) == 0);
	snprintf(dir, sizeof(dir), "/sys/kernel/debug/dri/%u/crtc-0/crc", minor(st.st_rdev));
	if (access(dir, F_OK))
		mount("debugfs", "/sys/kernel/debug", "debugfs", 0, NULL);
	snprintf(path, sizeof(path), "%s/control", dir);
	ctl = open(path, O_WRONLY | O_CLOEXEC);
	if (ctl < 0)
		FAIL("%s: %s", path, strerror(errno));
	ASSERT(write(ctl, "auto", 4) == 4);
	close(ctl);
	snprintf(path, sizeof(path), "%s/data", dir);
	data = open(path, O_RDONLY | O_CLOEXEC);
	if (data < 0)
		FAIL("%s: %s", path, strerror(errno));
	/* A few frames: the first may have been composed before the last flip. */
	for (int i = 0; i < 4; i++) {
		struct pollfd pfd = { .fd = data, .events = POLLIN };
		ssize_t len;

		if (poll(&pfd, 1, 30000) != 1)
			break;
		len = read(data, line, sizeof(line) - 1);
		if (len <= 0)
			break;
		line[len] = 0;
		if (sscanf(line, "%x %x", &frame, &value) != 2)
			break;
		n++;
	}
	close(data);
	if (n < 4)
		FAIL("only %d vkms CRC entries", n);
	*crc = value;
	return 0;
}

/* A vkms dumb buffer framebuffer filled like the export, for a reference CRC. */
static int dumb_fb(int drm, uint32_t w, uint32_t h, uint32_t seed,
		   uint32_t *handle, uint32_t *fb_id)
{
	struct drm_mode_create_dumb c = { .width = w, .height = h, .bpp = 32 };
	struct drm_mode_map_dumb m = { 0 };
	struct drm_mode_fb_cmd2 fb = { .width = w, .height = h, .pixel_format = 0x34325258 };
	void *p;

	ASSERT(ioctl(drm, DRM_IOCTL_MODE_CREATE_DUMB, &c) == 0);
	ASSERT(c.pitch == w * 4);
	m.handle = c.handle;
	ASSERT(ioctl(drm, DRM_IOCTL_MODE_MAP_DUMB, &m) == 0);
	p = mmap(NULL, c.size, PROT_READ | PROT_WRITE, MAP_SHARED, drm, m.offset);
	ASSERT(p != MAP_FAILED);
	fill(p, (size_t)w * 4 * h, seed);
	munmap(p, c.size);
	fb.handles[0] = c.handle;
	fb.pitches[0] = c.pitch;
	ASSERT(ioctl(drm, DRM_IOCTL_MODE_ADDFB2, &fb) == 0);
	*handle = c.handle;
	*fb_id = fb.fb_id;
	return 0;
}

static int t_prime_vkms_scanout(void)
{
	const uint32_t w = 640, hgt = 480, pitch = w * 4;
	size_t len = (size_t)pitch * hgt;
	uint8_t *user = map_anon(len);
	struct drm_prime_handle h = { 0 };
	struct drm_mode_fb_cmd2 fb = {
		.width = w, .height = hgt,
		.pixel_format = 0x34325258, /* XR24 */
	};
	struct drm_mode_modeinfo mode;
	struct drm_gem_close gc = { 0 };
	struct drm_mode_destroy_dumb dd = { 0 };
	uint32_t conn = 0, crtc_id = 0, ref_handle = 0, ref_fb = 0, other_handle = 0, other_fb = 0;
	uint32_t crc_ours = 0, crc_ref = 0, crc_other = 0;
	int drm = open_drm("vkms", "card"), fd, ret = -1;

	ASSERT(user && drm >= 0);
	fill(user, len, 22);
	ASSERT(vexport(dev, user, len, VMEMEXP_EXPORT_WRITE, &fd) == 0);
	h.fd = fd;
	if (ioctl(drm, DRM_IOCTL_PRIME_FD_TO_HANDLE, &h))
		FAIL("vkms PRIME import: %s", strerror(errno));
	fb.handles[0] = h.handle;
	fb.pitches[0] = pitch;
	if (ioctl(drm, DRM_IOCTL_MODE_ADDFB2, &fb))
		FAIL("vkms ADDFB2 XR24 640x480: %s", strerror(errno));
	ASSERT(vkms_pipe(drm, &conn, &crtc_id, &mode) == 0);
	ASSERT(dumb_fb(drm, w, hgt, 22, &ref_handle, &ref_fb) == 0);
	ASSERT(dumb_fb(drm, w, hgt, 23, &other_handle, &other_fb) == 0);
	/* Scanning the export out makes vkms vmap the dma-buf and read it. */
	if (set_crtc(drm, crtc_id, conn, &mode, fb.fb_id))
		diag("vkms SETCRTC with the imported framebuffer: %s", strerror(errno));
	else if (!vkms_crc(drm, &crc_ours) &&
		 !set_crtc(drm, crtc_id, conn, &mode, ref_fb) && !vkms_crc(drm, &crc_ref) &&
		 !set_crtc(drm, crtc_id, conn, &mode, other_fb) && !vkms_crc(drm, &crc_other)) {
		diag("vkms CRCs: export 0x%08x, same pixels in a dumb buffer 0x%08x, other pixels 0x%08x",
		     crc_ours, crc_ref, crc_other);
		ret = crc_ours == crc_ref && crc_ours != crc_other ? 0 : -1;
	}
	set_crtc(drm, crtc_id, 0, NULL, 0);
	ASSERT(ioctl(drm, DRM_IOCTL_MODE_RMFB, &fb.fb_id) == 0);
	ASSERT(ioctl(drm, DRM_IOCTL_MODE_RMFB, &ref_fb) == 0);
	ASSERT(ioctl(drm, DRM_IOCTL_MODE_RMFB, &other_fb) == 0);
	dd.handle = ref_handle;
	ioctl(drm, DRM_IOCTL_MODE_DESTROY_DUMB, &dd);
	dd.handle = other_handle;
	ioctl(drm, DRM_IOCTL_MODE_DESTROY_DUMB, &dd);
	gc.handle = h.handle;
	ASSERT(ioctl(drm, DRM_IOCTL_GEM_CLOSE, &gc) == 0);
	close(fd);
	close(drm);
	munmap(user, len);
	return ret;
}

/* Last: needs the module otherwise idle (no other open /dev/vmemexp). */
static int t_module_held_by_export(void)
{
	uint8_t *user = map_anon(PAGE), *view;
	int fd, ret;

	ASSERT(user);
	fill(user, PAGE, 23);
	ASSERT(vexport(dev, user, PAGE, VMEMEXP_EXPORT_WRITE, &fd) == 0);
	view = map_dmabuf(fd, PAGE, PROT_READ);
	ASSERT(view);
	close(fd);
	close(dev);
	dev = -1;
	/* Only the mapping holds the dma-buf now, and through it the module. */
	ret = syscall(SYS_delete_module, "vmemexp", O_NONBLOCK) ? -errno : 0;
	if (ret != -EWOULDBLOCK)
		FAIL("delete_module with a live export: %d, expected -EWOULDBLOCK", ret);
	ASSERT(differs(view, PAGE, 23) == -1);
	munmap(view, PAGE);
	munmap(user, PAGE);
	/* The cases after this one export again. */
	dev = open(DEV_PATH, O_RDWR | O_CLOEXEC);
	ASSERT(dev >= 0);
	return 0;
}

static const struct {
	const char *name;
	int (*fn)(void);
} tests[] = {
	{ "export_content", t_export_content },
	{ "readonly_fd", t_readonly_fd },
	{ "dma_buf_sync", t_dma_buf_sync },
	{ "memfd_shared", t_memfd_shared },
	{ "bad_args", t_bad_args },
	{ "bad_unaligned", t_bad_unaligned },
	{ "bad_zero_len", t_bad_zero_len },
	{ "bad_overflow", t_bad_overflow },
	{ "bad_too_big", t_bad_too_big },
	{ "bad_kernel_addr", t_bad_kernel_addr },
	{ "bad_hole", t_bad_hole },
	{ "bad_readonly_mapping", t_bad_readonly_mapping },
	{ "bad_pfnmap_dmabuf", t_bad_pfnmap_dmabuf },
	{ "bad_pfnmap_dumb", t_bad_pfnmap_dumb },
	{ "memlock_limit", t_memlock_limit },
	{ "munmap_after_export", t_munmap_after_export },
	{ "free_after_export", t_free_after_export },
	{ "owner_exits", t_owner_exits },
	{ "share_over_socket", t_share_over_socket },
	{ "device_fd_passed", t_device_fd_passed },
	{ "fork_after_export", t_fork_after_export },
	{ "cycles", t_cycles },
	{ "threads", t_threads },
	{ "prime_vgem", t_prime_vgem },
	{ "prime_vkms_scanout", t_prime_vkms_scanout },
	{ "module_held_by_export", t_module_held_by_export },
	{ "memlock_survives_exit", t_memlock_survives_exit },
	{ "global_cap", t_global_cap },
	{ "named_after_exporter", t_named_after_exporter },
	{ "device_fd_readonly", t_device_fd_readonly },
	{ "importer_mmap_readonly", t_importer_mmap_readonly },
	{ "importer_double_map", t_importer_double_map },
	{ "fault_around", t_fault_around },
	{ "mremap_and_past_end", t_mremap_and_past_end },
	{ "ext4_shared_refused", t_ext4_shared_refused },
	{ "ext4_private_cow", t_ext4_private_cow },
	{ "race_file_pin", t_race_file_pin },
	{ "hugetlb", t_hugetlb },
};

static int selected(const char *name, int argc, char **argv)
{
	if (argc < 2)
		return 1;
	for (int i = 1; i < argc; i++)
		if (strstr(name, argv[i]))
			return 1;
	return 0;
}

static int load_module(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0 || syscall(SYS_finit_module, fd, "", 0)) {
		fprintf(stderr, "load %s: %s\n", path, strerror(errno));
		return 1;
	}
	close(fd);
	return 0;
}

static int unload_module(const char *name)
{
	if (syscall(SYS_delete_module, name, O_NONBLOCK)) {
		fprintf(stderr, "unload %s: %s\n", name, strerror(errno));
		return 1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	int n = ARRAY_SIZE(tests), planned = 0, pass = 0, fail = 0;

	if (argc == 3 && !strcmp(argv[1], "--load"))
		return load_module(argv[2]);
	if (argc == 3 && !strcmp(argv[1], "--unload"))
		return unload_module(argv[2]);

	page_size = sysconf(_SC_PAGESIZE);
	if (getenv("VMEMEXP_EXT4_IMAGE")) {
		snprintf(ext4_image, sizeof(ext4_image), "%s", getenv("VMEMEXP_EXT4_IMAGE"));
	} else {
		const char *slash = strrchr(argv[0], '/');

		snprintf(ext4_image, sizeof(ext4_image), "%.*sext4.img",
			 slash ? (int)(slash - argv[0] + 1) : 0, argv[0]);
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGPIPE, SIG_IGN);
	for (int i = 0; i < n; i++)
		planned += selected(tests[i].name, argc, argv);
	printf("TAP version 13\n1..%d\n", planned);
	dev = open(DEV_PATH, O_RDWR | O_CLOEXEC);
	if (dev < 0)
		diag("open %s: %s (is the vmemexp module loaded?)", DEV_PATH, strerror(errno));
	for (int i = 0, k = 0; i < n; i++) {
		int ok;

		if (!selected(tests[i].name, argc, argv))
			continue;
		k++;
		ok = dev >= 0 && tests[i].fn() == 0;
		printf("%sok %d %s\n", ok ? "" : "not ", k, tests[i].name);
		if (ok)
			pass++;
		else
			fail++;
	}
	printf("# Totals: pass:%d fail:%d xfail:0 xpass:0 skip:0 error:0\n", pass, fail);
	return fail ? 1 : 0;
}
