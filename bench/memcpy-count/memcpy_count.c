// SPDX-License-Identifier: MPL-2.0
/*
 * LD_PRELOAD counter of the bytes a process copies with the C library's copy functions
 * (memcpy, memmove, mempcpy and their _FORTIFY_SOURCE forms), whoever calls them: GStreamer,
 * FFmpeg, Mesa, the application. Copies made with inlined code or SIMD loops of a library's own
 * are not seen; GStreamer's frame copies, FFmpeg's av_image_copy and the Rust standard
 * library's copies all call memcpy.
 *
 * At exit, when VMEM_MEMCPY_COUNT names a file, one line is appended to it:
 *   PID CALLS BYTES LARGE_CALLS LARGE_BYTES LINE_CALLS LINE_BYTES
 * LARGE: calls of 64 KiB or more (a whole plane at once); LINE: calls of 512 bytes up to
 * 64 KiB (row by row frame copies: 1280 bytes a row at 720p). Children that inherit the
 * variable (gst-plugin-scanner) append lines of their own, told apart by PID.
 *
 * Build: cc -O2 -shared -fPIC -fno-builtin -fno-tree-loop-distribute-patterns \
 *        -o libmemcpy_count.so memcpy_count.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define LARGE (64 * 1024)
#define LINE 512

typedef void *(*copy_fn)(void *, const void *, size_t);

static copy_fn real_memcpy, real_memmove, real_mempcpy;
static unsigned long long calls, bytes, large_calls, large_bytes, line_calls, line_bytes;

static void count(size_t n)
{
	__atomic_fetch_add(&calls, 1, __ATOMIC_RELAXED);
	__atomic_fetch_add(&bytes, n, __ATOMIC_RELAXED);
	if (n >= LARGE) {
		__atomic_fetch_add(&large_calls, 1, __ATOMIC_RELAXED);
		__atomic_fetch_add(&large_bytes, n, __ATOMIC_RELAXED);
	} else if (n >= LINE) {
		__atomic_fetch_add(&line_calls, 1, __ATOMIC_RELAXED);
		__atomic_fetch_add(&line_bytes, n, __ATOMIC_RELAXED);
	}
}

/* Before the real functions are known (inside dlsym itself): byte by byte, both directions. */
static void *slow_move(void *dst, const void *src, size_t n)
{
	volatile unsigned char *d = dst;
	const volatile unsigned char *s = src;

	if (d < s) {
		for (size_t i = 0; i < n; i++)
			d[i] = s[i];
	} else {
		for (size_t i = n; i > 0; i--)
			d[i - 1] = s[i - 1];
	}
	return dst;
}

static void resolve(void)
{
	if (!real_memcpy) {
		real_memmove = (copy_fn)dlsym(RTLD_NEXT, "memmove");
		real_mempcpy = (copy_fn)dlsym(RTLD_NEXT, "mempcpy");
		real_memcpy = (copy_fn)dlsym(RTLD_NEXT, "memcpy");
	}
}

__attribute__((constructor)) static void init(void)
{
	resolve();
}

__attribute__((destructor)) static void report(void)
{
	const char *path = getenv("VMEM_MEMCPY_COUNT");
	char line[256];
	int fd, len;

	if (!path || !*path)
		return;
	fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0)
		return;
	len = snprintf(line, sizeof(line), "%d %llu %llu %llu %llu %llu %llu\n", (int)getpid(),
		       calls, bytes, large_calls, large_bytes, line_calls, line_bytes);
	if (len > 0)
		(void)!write(fd, line, (size_t)len);
	close(fd);
}

void *memcpy(void *dst, const void *src, size_t n)
{
	count(n);
	return real_memcpy ? real_memcpy(dst, src, n) : slow_move(dst, src, n);
}

void *memmove(void *dst, const void *src, size_t n)
{
	count(n);
	return real_memmove ? real_memmove(dst, src, n) : slow_move(dst, src, n);
}

void *mempcpy(void *dst, const void *src, size_t n)
{
	count(n);
	if (real_mempcpy)
		return real_mempcpy(dst, src, n);
	return (char *)slow_move(dst, src, n) + n;
}

void *__memcpy_chk(void *dst, const void *src, size_t n, size_t dstlen)
{
	if (n > dstlen)
		abort();
	return memcpy(dst, src, n);
}

void *__memmove_chk(void *dst, const void *src, size_t n, size_t dstlen)
{
	if (n > dstlen)
		abort();
	return memmove(dst, src, n);
}

void *__mempcpy_chk(void *dst, const void *src, size_t n, size_t dstlen)
{
	if (n > dstlen)
		abort();
	return mempcpy(dst, src, n);
}
