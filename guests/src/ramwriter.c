/*
 * ramwriter: writes RAM heavily and without pause, for testing state
 * transfer while the guest runs. argv[1] = MiB (default 8), argv[2] =
 * passes (default 100). Each pass rewrites every 8-byte word of the
 * region from a running hash; every 10 passes it prints one line
 * "ramwriter pass N sum=HEX"; at the end "ramwriter done sum=HEX" and
 * powers off 0. Environment-free: the output is a function of the args.
 */
#include "hvft.h"

extern char __bss_end[];

int main(int argc, char **argv)
{
	uint64_t mib = argc > 1 ? hvft_atou(argv[1]) : 8;
	uint64_t passes = argc > 2 ? hvft_atou(argv[2]) : 100;
	if (mib == 0)
		mib = 8;
	uint64_t base = ((uint64_t)(uintptr_t)__bss_end + 0xFFFF) & ~0xFFFFull;
	uint64_t bytes = mib << 20;
	if (base + bytes + 0x10000 > hvft_ram_size()) {
		hvft_puts("ramwriter: region does not fit in RAM\n");
		return 2;
	}
	volatile uint64_t *w = (volatile uint64_t *)(uintptr_t)base;
	uint64_t words = bytes / 8, x = 0x9E3779B97F4A7C15ull;
	for (uint64_t p = 1; p <= passes; p++) {
		for (uint64_t i = 0; i < words; i++) {
			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
			w[i] = x + p;
		}
		if (p % 10 == 0)
			hvft_printf("ramwriter pass %lu sum=%016lx\n", (unsigned long)p, (unsigned long)x);
	}
	uint64_t sum = 0;
	for (uint64_t i = 0; i < words; i++)
		sum = sum * 31 + w[i];
	hvft_printf("ramwriter done sum=%016lx\n", (unsigned long)sum);
	return 0;
}
