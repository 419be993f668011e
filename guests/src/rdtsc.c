/*
 * rdtsc: reports what CPUID leaf 1 EDX bit 4 (TSC) says, then executes
 * RDTSC anyway, 5 times, printing each value. The board hides the TSC,
 * so output of this guest is nondeterministic: it exists to exercise
 * divergence detection. Powers off with 0.
 *
 * Output:
 *   cpuid says no TSC            (or "cpuid says TSC present")
 *   rdtsc[0]=<hex16>
 *   ...
 *   rdtsc[4]=<hex16>
 *   rdtsc done
 */
#include "hvft.h"

static inline uint64_t rdtsc(void)
{
	uint32_t lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi) : : "memory");
	return ((uint64_t)hi << 32) | lo;
}

int main(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	uint32_t edx = 0;

	hvft_cpuid(1, 0, 0, 0, 0, &edx);
	if (edx & (1u << 4))
		hvft_puts("cpuid says TSC present\n");
	else
		hvft_puts("cpuid says no TSC\n");

	for (int i = 0; i < 5; i++) {
		uint64_t t = rdtsc();
		hvft_printf("rdtsc[%d]=%016lx\n", i, t);
	}
	hvft_puts("rdtsc done\n");
	return 0;
}
