/*
 * dmacode: code loaded by disk DMA over code that has already run. A DMA
 * read changes RAM without a CPU store, and the next call of the buffer
 * must run the new bytes. Needs a disk (--disk) of at least B+1 sectors.
 *
 *   args: argv[1] = L, loads (default 200)
 *         argv[2] = B, code blobs (default 16, clamped to 2..64)
 *
 * Blob k (k = 0..B-1) is one 512-byte sector, written to sector 1+k:
 *
 *   k one-byte nops (90), then
 *   b8 <A_k>     mov $A_k, %eax
 *   35 <X_k>     xor $X_k, %eax
 *   c3           ret
 *   int3 (cc) up to offset 508, then the 4 bytes of k (little-endian)
 *
 * so it returns value_k = A_k ^ X_k (all distinct), and no two blobs have
 * the same instruction boundaries. Two code buffers take turns: "near", a
 * 4 KiB-aligned buffer in .bss (the same pages as the stack and data), and
 * "far", at the first 1 MiB boundary at least 1 MiB above the image end.
 *
 * Setup: write all blobs with one hvft_disk_write, DMA blob 0 into both
 * buffers and call each (so both are translated). Load i (0..L-1), buffer
 * b = i % 2 holding blob c:
 *   1. call b: must return value_c (the translation is live);
 *   2. hvft_disk_read blob j != c (j = (c + 1 + mix(i) % (B-1)) % B) into b;
 *   3. compare the 512 bytes with blob j (a mismatch counts in databad);
 *   4. call b: must return value_j.
 * A load is ok when both calls returned the right value.
 *
 * Output:
 *   dmacode: loads=<L> blobs=<B> ok=<n> bad=<n> databad=<n> sum=0x<8 hex>
 *   dmacode ok                                    -> power off 0
 *   dmacode FAILED                                -> power off 1
 * sum is FNV-1a-32 over every value returned by a call (4 LE bytes each,
 * in order). The first few failures are printed as
 *   dmacode: load=<i> buf=<near|far> <before|after> got=0x.. want=0x..[ (stale: blob <k>)]
 * Errors: "dmacode: no disk" (2), "dmacode: disk too small" (2),
 * "dmacode: RAM too small" (2), "dmacode: disk write error" (3),
 * "dmacode: disk read error at load <i>" (3).
 */
#include "hvft.h"

#define MIB          (1024UL * 1024UL)
#define MAX_BLOBS    64
#define MAX_REPORTS  5

static unsigned char near_buf[HVFT_SECTOR_SIZE] __attribute__((aligned(4096)));
static unsigned char stage[MAX_BLOBS * HVFT_SECTOR_SIZE] __attribute__((aligned(4096)));
static unsigned char expect[HVFT_SECTOR_SIZE];
static uint32_t values[MAX_BLOBS];

static uint32_t mix(uint32_t x)
{
	x ^= x >> 16;
	x *= 0x7feb352du;
	x ^= x >> 15;
	x *= 0x846ca68bu;
	x ^= x >> 16;
	return x;
}

static uint32_t fnv32(uint32_t h, uint32_t v)
{
	for (int k = 0; k < 4; k++) {
		h ^= (v >> (8 * k)) & 0xFF;
		h *= 0x01000193u;
	}
	return h;
}

static void put32(unsigned char *p, uint32_t v)
{
	p[0] = (unsigned char)v;
	p[1] = (unsigned char)(v >> 8);
	p[2] = (unsigned char)(v >> 16);
	p[3] = (unsigned char)(v >> 24);
}

/* builds blob k into p (512 bytes) and returns its value */
static uint32_t make_blob(unsigned char *p, uint32_t k)
{
	uint32_t a = mix(k * 2 + 0x1234567u), x = mix(k * 2 + 1 + 0x89abcdeu);
	uint32_t o = 0;

	for (uint32_t i = 0; i < k; i++)
		p[o++] = 0x90;          /* nop */
	p[o++] = 0xb8;                  /* mov $a, %eax */
	put32(p + o, a);
	o += 4;
	p[o++] = 0x35;                  /* xor $x, %eax */
	put32(p + o, x);
	o += 4;
	p[o++] = 0xc3;                  /* ret */
	while (o < HVFT_SECTOR_SIZE - 4)
		p[o++] = 0xcc;          /* int3 */
	put32(p + o, k);
	return a ^ x;
}

static uint32_t call(unsigned char *buf)
{
	uint32_t (*fn)(void) = (uint32_t (*)(void))(uintptr_t)buf;
	return fn();
}

int main(int argc, char **argv)
{
	uint32_t loads = argc > 1 ? (uint32_t)hvft_atou(argv[1]) : 200;
	uint32_t nblobs = argc > 2 ? (uint32_t)hvft_atou(argv[2]) : 16;
	uintptr_t far = ((uintptr_t)__hvft_image_end + 2 * MIB - 1) & ~(MIB - 1);
	unsigned char *bufs[2];
	static const char *const names[2] = { "near", "far" };
	uint32_t cur[2];
	uint32_t ok = 0, bad = 0, databad = 0, reports = 0, sum = 0x811c9dc5u;
	int sectors = hvft_disk_sectors();

	if (nblobs < 2)
		nblobs = 2;
	if (nblobs > MAX_BLOBS)
		nblobs = MAX_BLOBS;
	if (sectors <= 0) {
		hvft_puts("dmacode: no disk\n");
		return 2;
	}
	if ((uint32_t)sectors < nblobs + 1) {
		hvft_puts("dmacode: disk too small\n");
		return 2;
	}
	if (far + HVFT_SECTOR_SIZE + 64 * 1024 > hvft_ram_size()) {
		hvft_puts("dmacode: RAM too small\n");
		return 2;
	}
	bufs[0] = near_buf;
	bufs[1] = (unsigned char *)far;

	for (uint32_t k = 0; k < nblobs; k++)
		values[k] = make_blob(stage + k * HVFT_SECTOR_SIZE, k);
	if (hvft_disk_write(1, stage, nblobs) != 0) {
		hvft_puts("dmacode: disk write error\n");
		return 3;
	}
	/* scribble over the staging copy so that only the disk holds the blobs */
	memset(stage, 0, sizeof(stage));

	for (int b = 0; b < 2; b++) {
		if (hvft_disk_read(1, bufs[b], 1) != 0) {
			hvft_puts("dmacode: disk read error at setup\n");
			return 3;
		}
		cur[b] = 0;
		uint32_t v = call(bufs[b]);
		sum = fnv32(sum, v);
		if (v != values[0]) {
			hvft_printf("dmacode: setup buf=%s got=0x%x want=0x%x\n", names[b], v, values[0]);
			bad++;
		}
	}

	for (uint32_t i = 0; i < loads; i++) {
		int b = (int)(i & 1);
		uint32_t c = cur[b];
		uint32_t j = (c + 1 + mix(i) % (nblobs - 1)) % nblobs;
		uint32_t before, after;
		int good = 1;

		before = call(bufs[b]);
		sum = fnv32(sum, before);
		if (before != values[c]) {
			good = 0;
			if (reports++ < MAX_REPORTS)
				hvft_printf("dmacode: load=%u buf=%s before got=0x%x want=0x%x\n",
					    i, names[b], before, values[c]);
		}

		if (hvft_disk_read(1 + j, bufs[b], 1) != 0) {
			hvft_printf("dmacode: disk read error at load %u\n", i);
			return 3;
		}
		cur[b] = j;
		(void)make_blob(expect, j);
		if (memcmp(expect, bufs[b], HVFT_SECTOR_SIZE) != 0) {
			databad++;
			good = 0;
			if (reports++ < MAX_REPORTS)
				hvft_printf("dmacode: load=%u buf=%s data differs from blob %u\n", i, names[b], j);
		}

		after = call(bufs[b]);
		sum = fnv32(sum, after);
		if (after != values[j]) {
			good = 0;
			if (reports++ < MAX_REPORTS) {
				hvft_printf("dmacode: load=%u buf=%s after got=0x%x want=0x%x", i, names[b], after, values[j]);
				for (uint32_t k = 0; k < nblobs; k++)
					if (values[k] == after)
						hvft_printf(" (stale: blob %u)", k);
				hvft_putc('\n');
			}
		}
		if (good)
			ok++;
		else
			bad++;
	}

	hvft_printf("dmacode: loads=%u blobs=%u ok=%u bad=%u databad=%u sum=0x%08x\n",
		    loads, nblobs, ok, bad, databad, sum);
	if (bad || databad || ok != loads) {
		hvft_puts("dmacode FAILED\n");
		return 1;
	}
	hvft_puts("dmacode ok\n");
	return 0;
}
