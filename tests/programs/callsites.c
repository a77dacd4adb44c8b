/* Faults three kinds of mapping from three functions, a known number of times
 * each: private anonymous memory (do_anonymous_page), shared anonymous memory
 * (shmem_fault), and a private mapping of a file written to (filemap_fault,
 * do_cow_fault: a write fault maps one page, with no fault-around). The call
 * sites test checks that each function is above its own mapping, with exactly
 * that count. Built with -O0 -fno-omit-frame-pointer: rmaptrace walks frame
 * pointers, and gcc leaves them out of leaf functions when it optimises (even
 * with -mno-omit-leaf-frame-pointer, gcc 12), which hides their caller.
 *
 * usage: callsites FILE [SECONDS]   FILE is created; SECONDS: sleep after.
 * With CALLSITES_WAIT set, it maps, prints "ready", and waits for a line on
 * stdin before faulting (a tracer attaches with --pid meanwhile).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096
#define ANON_PAGES 48
#define SHARED_PAGES 32
#define FILE_PAGES 24

/* noipa: neither inlined nor cloned, so each keeps its own name. */
__attribute__((noipa)) static void touch_anon(volatile char *p, int pages)
{
	for (int i = 0; i < pages; i++)
		p[(long)i * PAGE] = 1;
}

__attribute__((noipa)) static void touch_shared(volatile char *p, int pages)
{
	for (int i = 0; i < pages; i++)
		p[(long)i * PAGE] = 2;
}

__attribute__((noipa)) static void write_file_copy(volatile char *p, int pages)
{
	for (int i = 0; i < pages; i++)
		p[(long)i * PAGE] = 3;
}

static char *map(size_t len, int flags, int fd)
{
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, flags, fd, 0);
	if (p == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	/* One fault per page: no transparent huge page. */
	madvise(p, len, MADV_NOHUGEPAGE);
	return p;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: callsites FILE [SECONDS]\n");
		return 2;
	}
	int fd = open(argv[1], O_RDWR | O_CREAT | O_EXCL, 0600);
	if (fd < 0 || ftruncate(fd, FILE_PAGES * PAGE) != 0) {
		perror(argv[1]);
		return 1;
	}
	char *anon = map(ANON_PAGES * PAGE, MAP_PRIVATE | MAP_ANONYMOUS, -1);
	char *shared = map(SHARED_PAGES * PAGE, MAP_SHARED | MAP_ANONYMOUS, -1);
	char *file = map(FILE_PAGES * PAGE, MAP_PRIVATE, fd);
	if (getenv("CALLSITES_WAIT")) {
		char line[8];
		printf("ready\n");
		fflush(stdout);
		if (!fgets(line, sizeof(line), stdin))
			return 1;
	}
	touch_anon(anon, ANON_PAGES);
	touch_shared(shared, SHARED_PAGES);
	write_file_copy(file, FILE_PAGES);
	printf("{\"pid\":%d,\"anon\":\"%p\",\"shared\":\"%p\",\"file\":\"%p\",\"anon_pages\":%d,\"shared_pages\":%d,\"file_pages\":%d}\n",
	       (int)getpid(), (void *)anon, (void *)shared, (void *)file, ANON_PAGES, SHARED_PAGES, FILE_PAGES);
	fflush(stdout);
	if (argc > 2)
		sleep(atoi(argv[2]));
	return 0;
}
