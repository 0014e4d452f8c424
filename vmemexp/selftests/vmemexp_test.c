// SPDX-License-Identifier: GPL-2.0
/*
 * vmemexp selftest: every case asserts an errno, a counter or the bytes seen
 * through the dma-buf. Needs root, the vmemexp module loaded and, for the
 * PRIME cases, vkms and vgem. TAP output; exit status 1 on any failure.
 *
 *   vmemexp_test [NAME-SUBSTRING...]
 *   VMEMEXP_CYCLES=N   export/release cycles of the "cycles" case (100000)
 *   vmemexp_test --load PATH.ko | --unload
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
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <linux/dma-buf.h>
#include <linux/vmemexp.h>
#include <drm.h>
#include <drm_mode.h>

#define PAGE 4096UL
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

static int t_dma_buf_sync(void)
{
	size_t len = 4 * PAGE;
	uint8_t *user = map_anon(len);
	int fd;

	ASSERT(user);
	ASSERT(vexport(dev, user, len, VMEMEXP_EXPORT_WRITE, &fd) == 0);
	ASSERT(dmabuf_sync(fd, DMA_BUF_SYNC_START | DMA_BUF_SYNC_RW) == 0);
	fill(user, len, 5);
	ASSERT(dmabuf_sync(fd, DMA_BUF_SYNC_END | DMA_BUF_SYNC_RW) == 0);
	ASSERT(dmabuf_sync(fd, DMA_BUF_SYNC_START | DMA_BUF_SYNC_READ) == 0);
	ASSERT(dmabuf_sync(fd, DMA_BUF_SYNC_END | DMA_BUF_SYNC_READ) == 0);
	ASSERT(dmabuf_sync(fd, 0x80) == -EINVAL);
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
	/* x86-64's direct map, and a range that crosses the end of user space. */
	ASSERT(export_errno((void *)0xffff888000000000UL, PAGE, VMEMEXP_EXPORT_WRITE) == -EFAULT);
	ASSERT(export_errno((void *)0x00007ffffffff000UL, 2 * PAGE, 0) == -EFAULT);
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

static int t_free_after_export(void)
{
	size_t len = 1 << 20;
	void *user = NULL, *other;
	uint8_t *view;
	long pin = vmpin_kb();
	int fd;

	ASSERT(posix_memalign(&user, PAGE, len) == 0);
	fill(user, len, 11);
	ASSERT(vexport(dev, user, len, VMEMEXP_EXPORT_WRITE, &fd) == 0);
	free(user);
	other = malloc(len);
	ASSERT(other);
	fill(other, len, 12);
	view = map_dmabuf(fd, len, PROT_READ);
	ASSERT(view);
	ASSERT(differs(view, len, 11) == -1);
	munmap(view, len);
	close(fd);
	free(other);
	ASSERT(vmpin_kb() == pin);
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

/* ---- real importers ---- */

static int t_prime_vgem(void)
{
	size_t len = 16 * PAGE;
	uint8_t *user = map_anon(len);
	struct drm_prime_handle h = { .flags = 0 };
	struct drm_gem_close gc = { 0 };
	int drm = open_drm("vgem", "renderD"), fd;

	ASSERT(user && drm >= 0);
	fill(user, len, 21);
	ASSERT(vexport(dev, user, len, VMEMEXP_EXPORT_WRITE, &fd) == 0);
	h.fd = fd;
	/* vgem attaches and maps (dma_map_sgtable) on import. */
	if (ioctl(drm, DRM_IOCTL_PRIME_FD_TO_HANDLE, &h))
		FAIL("vgem PRIME import: %s", strerror(errno));
	ASSERT(h.handle);
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

static int unload_module(void)
{
	if (syscall(SYS_delete_module, "vmemexp", O_NONBLOCK)) {
		fprintf(stderr, "unload vmemexp: %s\n", strerror(errno));
		return 1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	int n = ARRAY_SIZE(tests), planned = 0, pass = 0, fail = 0;

	if (argc == 3 && !strcmp(argv[1], "--load"))
		return load_module(argv[2]);
	if (argc == 2 && !strcmp(argv[1], "--unload"))
		return unload_module();

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
