/*
 * tlbstress: touches many 4 KiB pages in a scattered order. Fully
 * deterministic (reads no clock, no random, no console input).
 *
 *   args: argv[1] = M, region size in MiB (default 8)
 *         argv[2] = K, number of passes (default 4)
 *
 * The region starts at the first 1 MiB boundary above the image and must
 * end at least 64 KiB below the top of RAM (bootinfo ram_size).
 * P = M * 256 pages. Pass p (0..K-1) visits every page exactly once in the
 * order page(k) = (k * stride_p + p * 97) mod P, k = 0..P-1, where stride_p
 * is odd and coprime with P. While visiting page i in pass p it first checks
 * the word written to that page by pass p-1 (if any), then writes
 * value(i, p, j) to the 8 words at byte offsets j*512 + (p%64)*8, j = 0..7.
 * Finally every page is read back in index order and every word written by
 * the last min(K, 64) passes is verified and folded into
 * sum = FNV-1a-64 style (sum ^= word; sum *= 0x100000001b3), starting at
 * 0xcbf29ce484222325.
 *
 * Output:
 *   tlbstress mib=<M> passes=<K> base=<hex>
 *   tlbstress sum=<16 hex> pages=<P>
 *   tlbstress ok                         -> power off 0
 * or "tlbstress FAILED errors=<n>"       -> power off 1
 * or "tlbstress: region does not fit in RAM" -> power off 2
 */
#include "hvft.h"

#define PAGE 4096UL
#define MIB (1024UL * 1024UL)
#define TOP_RESERVE (64UL * 1024UL)
#define WORDS_PER_PAGE (PAGE / 8)

static uint64_t value(uint64_t page, uint64_t pass, uint64_t j)
{
	/* splitmix64 finalizer over (page, pass, j) */
	uint64_t z = (page << 16) ^ (pass << 4) ^ j ^ 0x9e3779b97f4a7c15ULL;
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static uint64_t gcd(uint64_t a, uint64_t b)
{
	while (b) {
		uint64_t t = a % b;
		a = b;
		b = t;
	}
	return a;
}

static uint64_t stride_for(uint64_t pass, uint64_t pages)
{
	uint64_t s;
	if (pages <= 1)
		return 1;
	s = ((2654435761ULL * (pass + 1)) % pages) | 1;
	while (gcd(s, pages) != 1)
		s += 2;
	return s % pages;
}

static inline uint64_t slot(uint64_t pass, uint64_t j)
{
	return j * (512 / 8) + (pass % 64);   /* word index in the page */
}

int main(int argc, char **argv)
{
	unsigned long mib = argc > 1 ? hvft_atou(argv[1]) : 8;
	unsigned long passes = argc > 2 ? hvft_atou(argv[2]) : 4;
	uint64_t base = ((uint64_t)(uintptr_t)__hvft_image_end + MIB - 1) & ~(MIB - 1);
	uint64_t ram = hvft_ram_size();
	uint64_t pages, errors = 0, sum = 0xcbf29ce484222325ULL;
	volatile uint64_t *region;

	if (mib == 0)
		mib = 8;
	hvft_printf("tlbstress mib=%lu passes=%lu base=%lx\n", mib, passes, base);
	if (ram < TOP_RESERVE || base + mib * MIB > ram - TOP_RESERVE) {
		hvft_puts("tlbstress: region does not fit in RAM\n");
		return 2;
	}
	pages = mib * (MIB / PAGE);
	region = (volatile uint64_t *)(uintptr_t)base;

	for (uint64_t p = 0; p < passes; p++) {
		uint64_t stride = stride_for(p, pages);
		uint64_t idx = (p * 97) % pages;
		for (uint64_t k = 0; k < pages; k++) {
			volatile uint64_t *pg = region + idx * WORDS_PER_PAGE;
			if (p > 0 && pg[slot(p - 1, 0)] != value(idx, p - 1, 0))
				errors++;
			for (uint64_t j = 0; j < 8; j++)
				pg[slot(p, j)] = value(idx, p, j);
			idx += stride;
			if (idx >= pages)
				idx -= pages;
		}
	}

	uint64_t first = passes > 64 ? passes - 64 : 0;
	for (uint64_t i = 0; i < pages; i++) {
		volatile uint64_t *pg = region + i * WORDS_PER_PAGE;
		for (uint64_t p = first; p < passes; p++) {
			for (uint64_t j = 0; j < 8; j++) {
				uint64_t v = pg[slot(p, j)];
				if (v != value(i, p, j))
					errors++;
				sum ^= v;
				sum *= 0x100000001b3ULL;
			}
		}
	}

	hvft_printf("tlbstress sum=%016lx pages=%lu\n", sum, pages);
	if (errors) {
		hvft_printf("tlbstress FAILED errors=%lu\n", errors);
		return 1;
	}
	hvft_puts("tlbstress ok\n");
	return 0;
}
