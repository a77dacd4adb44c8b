/* A 32-bit process (the tests build it with gcc -m32 -static): its mmap calls go
 * through the ia32 entry points (mmap2), and its faults through a compat mm.
 * An anonymous mapping of 16 pages, page 0 written; a memfd mapped over pages
 * 1..15 with MAP_FIXED, written. Prints where both are as one JSON line. */
#define _GNU_SOURCE
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096

int main(void)
{
	char *p = mmap(NULL, 16 * PAGE, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	*(volatile char *)p = 1;

	int fd = memfd_create("rmt32", 0);
	if (fd < 0) {
		perror("memfd_create");
		return 1;
	}
	if (ftruncate(fd, 15 * PAGE) != 0) {
		perror("ftruncate");
		return 1;
	}
	char *m = mmap(p + PAGE, 15 * PAGE, PROT_READ | PROT_WRITE,
		       MAP_SHARED | MAP_FIXED, fd, 0);
	if (m == MAP_FAILED || m != p + PAGE) {
		perror("mmap memfd");
		return 1;
	}
	for (int i = 1; i < 16; i++)
		*(volatile char *)(p + i * PAGE) = 1;

	printf("{\"pid\":%d,\"addr\":\"0x%lx\",\"memfd_addr\":\"0x%lx\"}\n",
	       (int)getpid(), (unsigned long)p, (unsigned long)m);
	return 0;
}
