// probe: a Linux program of hvft's own that exercises one part of the
// system-call personality per mode, for the machine's tests.
//   probe tsc N       N RDTSC values, then "monotonic yes|no", an RDTSCP
//   probe mem         malloc, realloc (mremap), mmap/munmap; "mem ok"
//   probe env         argv, environment, clock, random, cwd, uname
//   probe files DIR   create, write, append, read back, rename, unlink
//   probe hwcap       "hwcap consistent" when AT_HWCAP is CPUID leaf 1's EDX
//                     (musl reads the auxiliary vector; glibc overrides it)
//   probe segv | ud2 | int1 | hlt | unsupported
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <cpuid.h>
#include <sys/auxv.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>
#include <x86intrin.h>

static int tsc(int n) {
	uint64_t prev = 0;
	int mono = 1;
	for (int i = 0; i < n; i++) {
		uint64_t t = __rdtsc();
		if (t <= prev) mono = 0;
		prev = t;
		printf("tsc %llu\n", (unsigned long long)t);
		for (volatile int j = 0; j < 20000; j++) {}
	}
	unsigned aux;
	uint64_t p = __rdtscp(&aux);
	printf("monotonic %s rdtscp-later %s\n", mono ? "yes" : "no", p > prev ? "yes" : "no");
	return 0;
}

static int mem(void) {
	size_t n = 1 << 20;
	unsigned char *p = malloc(16);
	for (int round = 0; round < 6; round++, n *= 2) {
		p = realloc(p, n);
		p[n - 1] = (unsigned char)round;
		p[0] = 0x5a;
	}
	if (p[0] != 0x5a) { puts("mem: realloc lost data"); return 1; }
	free(p);
	char *m = mmap(NULL, 1 << 22, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED) { puts("mem: mmap failed"); return 1; }
	memset(m, 1, 1 << 22);
	if (munmap(m + 4096, 8192) != 0) { puts("mem: munmap failed"); return 1; }
	if (m[0] != 1 || m[3 << 20] != 1) { puts("mem: mapping lost data"); return 1; }
	if (mprotect(m, 4096, PROT_READ) != 0) { puts("mem: mprotect failed"); return 1; }
	puts("mem ok");
	return 0;
}

static int env(int argc, char **argv) {
	for (int i = 0; i < argc; i++) printf("argv[%d] %s\n", i, argv[i]);
	for (char **e = environ; *e; e++) printf("env %s\n", *e);
	struct timespec ts, mono;
	clock_gettime(CLOCK_REALTIME, &ts);
	clock_gettime(CLOCK_MONOTONIC, &mono);
	unsigned char r[8];
	if (getrandom(r, sizeof r, 0) != sizeof r) return 1;
	char cwd[256];
	struct utsname u;
	uname(&u);
	printf("time %lld.%09ld mono-positive %d random %02x%02x%02x%02x cwd %s sys %s %s pid %d\n",
	       (long long)ts.tv_sec, ts.tv_nsec, mono.tv_sec > 0 || mono.tv_nsec > 0, r[0], r[1], r[2], r[3],
	       getcwd(cwd, sizeof cwd), u.sysname, u.machine, (int)getpid());
	return 0;
}

static int files(const char *dir) {
	char a[512], b[512], buf[64];
	snprintf(a, sizeof a, "%s/probe-a", dir);
	snprintf(b, sizeof b, "%s/probe-b", dir);
	int fd = open(a, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || write(fd, "first ", 6) != 6) { puts("files: create failed"); return 1; }
	close(fd);
	fd = open(a, O_WRONLY | O_APPEND);
	if (fd < 0 || write(fd, "second\n", 7) != 7) { puts("files: append failed"); return 1; }
	close(fd);
	if (rename(a, b) != 0) { puts("files: rename failed"); return 1; }
	fd = open(b, O_RDONLY);
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	buf[n > 0 ? n : 0] = 0;
	printf("read back: %s", buf);
	if (unlink(b) != 0 || access(b, F_OK) == 0) { puts("files: unlink failed"); return 1; }
	if (open(b, O_RDONLY) >= 0) { puts("files: the unlinked file opens"); return 1; }
	puts("files ok");
	return 0;
}

int main(int argc, char **argv) {
	setvbuf(stdout, NULL, _IOLBF, 0);
	const char *mode = argc > 1 ? argv[1] : "";
	if (!strcmp(mode, "tsc")) return tsc(argc > 2 ? atoi(argv[2]) : 5);
	if (!strcmp(mode, "mem")) return mem();
	if (!strcmp(mode, "env")) return env(argc, argv);
	if (!strcmp(mode, "files") && argc > 2) return files(argv[2]);
	if (!strcmp(mode, "hwcap")) {
		unsigned a, b, c, d;
		__cpuid(1, a, b, c, d);
		printf(getauxval(AT_HWCAP) == d ? "hwcap consistent\n" : "hwcap %#lx, cpuid %#x\n", getauxval(AT_HWCAP), d);
		return 0;
	}
	if (!strcmp(mode, "segv")) { puts("about to fault"); *(volatile int *)16 = 1; return 0; }
	if (!strcmp(mode, "ud2")) { __asm__ volatile("ud2"); return 0; }
	if (!strcmp(mode, "int1")) { __asm__ volatile(".byte 0xf1"); return 0; }
	if (!strcmp(mode, "hlt")) { __asm__ volatile("hlt"); return 0; }
	if (!strcmp(mode, "unsupported")) {
		long r1 = syscall(999), r2 = syscall(999);
		printf("unsupported %ld %ld fork %d\n", r1, r2, (int)syscall(SYS_fork));
		return 0;
	}
	fprintf(stderr, "usage: probe tsc N | mem | env | files DIR | segv | ud2 | int1 | hlt | unsupported\n");
	return 2;
}
