/*
 * branchy: a CoreMark-class benchmark of short basic blocks (linked lists,
 * a number-scanning state machine, bitwise CRC-16/CRC-32, small integer
 * matrices). The workload is src/branchy_work.h, plain C with no SDK
 * dependency (it also builds as a Linux program: see the header); this
 * file only parses arguments, runs it and checks the result.
 *
 *   args: argv[1] = S, size (default 64, clamped to 8..1024): list nodes,
 *                   8*S bytes of scanner input, matrices of (S/4)^2
 *         argv[2] = N, iterations (default 3000)
 *         argv[3] = seed (default 0x4b1dc0de)
 *
 * Fully deterministic (no clock, random or input). Checks: the CRC check
 * values ("123456789": CRC-16/CCITT-FALSE 0x29b1, CRC-32 0xcbf43926), the
 * workload's internal consistency checks (errors=0), and, with all three
 * arguments at their defaults, the checksum a native build of the same
 * header computes (gcc -O2 on x86-64 Linux): BRANCHY_EXPECT below.
 *
 * Output:
 *   branchy: size=<S> iters=<N> seed=0x<8 hex> selftest=<n> errors=<n> sum=0x<8 hex>
 *   branchy ok                  -> power off 0
 *   branchy FAILED              -> power off 1 (after "branchy: want sum=0x..."
 *                                  when the default checksum differs)
 */
#include "hvft.h"
#include "branchy_work.h"

#define BRANCHY_EXPECT 0x18230ef5u   /* size 64, 3000 iterations, seed 0x4b1dc0de */

int main(int argc, char **argv)
{
	uint32_t size = argc > 1 ? (uint32_t)hvft_atou(argv[1]) : BRANCHY_DEFAULT_SIZE;
	uint32_t iters = argc > 2 ? (uint32_t)hvft_atou(argv[2]) : BRANCHY_DEFAULT_ITERS;
	uint32_t seed = argc > 3 ? (uint32_t)hvft_atou(argv[3]) : BRANCHY_DEFAULT_SEED;
	uint32_t selftest, errors, sum;
	int ok;

	size = branchy_clamp_size(size);
	selftest = branchy_selftest();
	sum = branchy_run(size, iters, seed, &errors);
	hvft_printf("branchy: size=%u iters=%u seed=0x%08x selftest=%u errors=%u sum=0x%08x\n",
		    size, iters, seed, selftest, errors, sum);
	ok = selftest == 0 && errors == 0;
	if (size == BRANCHY_DEFAULT_SIZE && iters == BRANCHY_DEFAULT_ITERS &&
	    seed == BRANCHY_DEFAULT_SEED && sum != BRANCHY_EXPECT) {
		hvft_printf("branchy: want sum=0x%08x\n", BRANCHY_EXPECT);
		ok = 0;
	}
	hvft_puts(ok ? "branchy ok\n" : "branchy FAILED\n");
	return ok ? 0 : 1;
}
