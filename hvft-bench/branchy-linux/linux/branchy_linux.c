// The board's branchy benchmark guest (guests/src/branchy_work.h) built as
// a Linux program, for hvft bench's comparison with qemu-x86_64.
//   branchy_linux [SIZE [ITERS]]
#include <stdio.h>
#include <stdlib.h>
#include "../src/branchy_work.h"

int main(int argc, char **argv) {
	uint32_t errors;
	uint32_t size = argc > 1 ? (uint32_t)atoi(argv[1]) : BRANCHY_DEFAULT_SIZE;
	uint32_t iters = argc > 2 ? (uint32_t)atoi(argv[2]) : BRANCHY_DEFAULT_ITERS;
	uint32_t sum = branchy_run(branchy_clamp_size(size), iters, BRANCHY_DEFAULT_SEED, &errors);
	printf("branchy: sum=0x%08x errors=%u\n", sum, errors);
	return errors != 0;
}
