// exclfiles: a program of hvft's own that claims file names the ways
// programs do, for the Linux personality's failover tests: every call the
// journal covers, each with the answer a program depends on.
//
//   exclfiles DIR N   for each I in 1..N, one line per step, "STEP I ok"
//                     (or "STEP I errno E" when the call fails), then
//                     "done N":
//     excl     open(DIR/excl-I, O_CREAT|O_EXCL|O_WRONLY), write "I\n"
//     mkstemp  mkstemp(DIR/tmp-XXXXXX), write "I\n"
//     rename   that file over DIR/current
//     lock     open(DIR/lock, O_CREAT|O_EXCL), close, unlink it
//     taken    open(DIR/excl-I, O_CREAT|O_EXCL) again: "errno 17"
//     missing  unlink(DIR/never): "errno 2"
//     mkdir    mkdir(DIR/d-I)
//     link     link(DIR/excl-I, DIR/hard-I)
//     symlink  symlink("excl-I", DIR/sym-I)
//
// Afterwards DIR holds current ("N\n"), and d-I, excl-I ("I\n"), hard-I
// and sym-I for each I: nothing twice, nothing left over.
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void step(const char *what, long i, int failed) {
	if (failed)
		printf("%s %ld errno %d\n", what, i, errno);
	else
		printf("%s %ld ok\n", what, i);
	fflush(stdout);
}

// number writes "I\n" to fd and closes it; 0, or -1 with errno.
static int number(int fd, long i) {
	char buf[32];
	int n = snprintf(buf, sizeof buf, "%ld\n", i);
	if (write(fd, buf, n) != n) {
		close(fd);
		return -1;
	}
	return close(fd);
}

int main(int argc, char **argv) {
	if (argc != 3) {
		fprintf(stderr, "usage: exclfiles DIR N\n");
		return 2;
	}
	const char *dir = argv[1];
	long n = atol(argv[2]);
	char a[4096], b[4096], rel[64];
	for (long i = 1; i <= n; i++) {
		snprintf(a, sizeof a, "%s/excl-%ld", dir, i);
		int fd = open(a, O_CREAT | O_EXCL | O_WRONLY, 0644);
		step("excl", i, fd < 0 || number(fd, i) < 0);

		snprintf(b, sizeof b, "%s/tmp-XXXXXX", dir);
		fd = mkstemp(b);
		step("mkstemp", i, fd < 0 || number(fd, i) < 0);
		snprintf(a, sizeof a, "%s/current", dir);
		step("rename", i, rename(b, a) < 0);

		snprintf(a, sizeof a, "%s/lock", dir);
		fd = open(a, O_CREAT | O_EXCL | O_WRONLY, 0600);
		step("lock", i, fd < 0 || close(fd) < 0 || unlink(a) < 0);

		snprintf(a, sizeof a, "%s/excl-%ld", dir, i);
		fd = open(a, O_CREAT | O_EXCL | O_WRONLY, 0644);
		step("taken", i, fd < 0);
		if (fd >= 0)
			close(fd);

		snprintf(a, sizeof a, "%s/never", dir);
		step("missing", i, unlink(a) < 0);

		snprintf(a, sizeof a, "%s/d-%ld", dir, i);
		step("mkdir", i, mkdir(a, 0755) < 0);

		snprintf(a, sizeof a, "%s/excl-%ld", dir, i);
		snprintf(b, sizeof b, "%s/hard-%ld", dir, i);
		step("link", i, link(a, b) < 0);

		snprintf(rel, sizeof rel, "excl-%ld", i);
		snprintf(b, sizeof b, "%s/sym-%ld", dir, i);
		step("symlink", i, symlink(rel, b) < 0);
	}
	printf("done %ld\n", n);
	return 0;
}
