/*
 * rdtscram: a nondeterministic value that lives only in RAM. RDTSC (which
 * the board's CPUID hides, and which is not an environment instruction) is
 * stored to a word in .bss and every register it touched is cleared at
 * once, in one asm block:
 *
 *     rdtsc; shl $32, %rdx; or %rdx, %rax; mov %rax, (stash)
 *     xor %eax, %eax; xor %edx, %edx          (flags cleared too)
 *
 * Then the guest spins deterministically for many epochs without touching
 * that word, so two replicas differ only in RAM until the very end: the
 * hypervisor must find the difference through its RAM hash. At the end it
 * prints the stored value (so the console differs too, but only then).
 *
 *   args: argv[1] = S, spin iterations (default 20000000; one translation
 *                   block each: 200 epochs of the default 100000 blocks)
 *
 * The spin is an asm loop  acc += k; k += STEP  (S times, registers only),
 * checked against its closed form  S*K0 + STEP*S*(S-1)/2  (mod 2^64).
 *
 * Output:
 *   rdtscram: storing                (just before the store)
 *   rdtscram: spins=<S> acc=0x<16 hex> want=0x<16 hex>
 *   rdtscram: stored=0x<16 hex>      (nondeterministic by design)
 *   rdtscram ok                      -> power off 0
 *   rdtscram FAILED                  -> power off 1 (acc != want)
 */
#include "hvft.h"

#define K0   0x0123456789abcdefULL
#define STEP 0x9e3779b97f4a7c15ULL

static uint64_t stash[8] __attribute__((aligned(64)));

int main(int argc, char **argv)
{
	uint64_t s = argc > 1 ? hvft_atou(argv[1]) : 20000000;
	uint64_t acc = 0, k = K0, n = s, half, want;

	/* The store follows at once: a test locates its epoch by this line. */
	hvft_puts("rdtscram: storing\n");
	__asm__ volatile(
		"rdtsc\n\t"
		"shlq $32, %%rdx\n\t"
		"orq %%rdx, %%rax\n\t"
		"movq %%rax, (%0)\n\t"
		"xorl %%eax, %%eax\n\t"
		"xorl %%edx, %%edx\n\t"
		: : "r"(&stash[0]) : "rax", "rdx", "memory", "cc");

	if (n) {
		__asm__ volatile(
			"1:\n\t"
			"addq %1, %0\n\t"
			"addq %3, %1\n\t"
			"decq %2\n\t"
			"jnz 1b\n\t"
			: "+r"(acc), "+r"(k), "+r"(n)
			: "r"(STEP)
			: "cc");
	}

	/* S*(S-1)/2 without overflow trouble: halve the even factor first */
	half = (s % 2 == 0) ? (s / 2) * (s ? s - 1 : 0) : s * ((s - 1) / 2);
	want = s * K0 + STEP * half;

	hvft_printf("rdtscram: spins=%lu acc=0x%016lx want=0x%016lx\n", s, acc, want);
	hvft_printf("rdtscram: stored=0x%016lx\n", *(volatile uint64_t *)&stash[0]);
	if (acc != want) {
		hvft_puts("rdtscram FAILED\n");
		return 1;
	}
	hvft_puts("rdtscram ok\n");
	return 0;
}
