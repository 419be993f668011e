/*
 * smc: self-modifying code. Every patch must be seen by the next execution
 * of the patched bytes (x86 detects stores into the instruction stream), so
 * on a correct machine every check passes.
 *
 *   args: argv[1] = mode: "same", "other", "next" or "all" (default: all
 *                   three in that order)
 *         argv[2] = N, iterations per mode (default 2000)
 *
 * Iteration i of a mode computes a fresh 32-bit value v = mix(mode, i)
 * (never equal to the previous one), patches it into the imm32 of a
 * "mov $imm32, %eax" (b8 imm32) and executes the patched instruction, which
 * must return v. Each patched stub has already been executed (so
 * translated) with its previous value.
 *
 *   same:  the stub "mov $imm32, %eax; ret" lives in .text, in the same
 *          256-byte aligned chunk (so the same 4 KiB page) as the routine
 *          that stores into it and then calls it. Each iteration: patch
 *          and call, then call again CALLS-1 (3) times; check each result.
 *   other: four stubs at far RAM addresses: the first 1 MiB boundary at
 *          least 1 MiB above the image end, plus k MiB (k = 0..3): a
 *          different page from the code for any TLB page size up to 1 MiB.
 *          Iteration i patches stub i % 4 from C (volatile byte stores) and
 *          calls it CALLS times.
 *   next:  one asm block stores v into the imm32 of the instruction right
 *          after the store and falls through into it, in one basic block:
 *            mov %edi, 1f+1(%rip)     # patch the next instruction
 *            1: mov $imm32, %eax      # must execute with imm32 = v
 *          checked once per iteration.
 *
 * Output, one line per mode run, then a verdict:
 *   smc: <mode> ok=<n> bad=<n> sum=0x<8 hex>
 *   smc ok                     -> power off 0
 *   smc FAILED                 -> power off 1
 * sum is FNV-1a-32 over the returned values (4 little-endian bytes each, in
 * order), so it is the same on every correct run (for given N). The first
 * few wrong results are also printed as
 *   smc: <mode> iter=<i> got=0x<hex> want=0x<hex>
 * Unknown mode: "smc: unknown mode M", power off 2. Far stubs that do not
 * fit in RAM: "smc: RAM too small for far stubs", power off 2.
 */
#include "hvft.h"

#define CALLS        4
#define FAR_STUBS    4
#define MIB          (1024UL * 1024UL)
#define MAX_REPORTS  5

struct result {
	uint32_t ok, bad, sum;
	uint32_t reports;
};

/* "same": one 256-byte aligned chunk of .text holds
 *   smc_same(v):     stores v into the stub's imm32, then calls the stub
 *                    and returns what it returned;
 *   smc_same_call(): calls the stub again;
 *   the stub:        mov $imm32, %eax; ret. */
uint32_t smc_same(uint32_t v);
uint32_t smc_same_call(void);
__asm__(
	".text\n"
	".balign 256\n"
	"smc_same_chunk:\n"
	".globl smc_same\n"
	"smc_same:\n"
	"	movl %edi, smc_same_stub+1(%rip)\n"
	"	call smc_same_stub\n"
	"	ret\n"
	".globl smc_same_call\n"
	"smc_same_call:\n"
	"	call smc_same_stub\n"
	"	ret\n"
	"smc_same_stub:\n"
	"	.byte 0xb8\n"           /* mov $imm32, %eax */
	"	.long 0\n"
	"	ret\n"
	"smc_same_end:\n"
	".if smc_same_end - smc_same_chunk > 256\n"
	".error \"smc same chunk too big\"\n"
	".endif\n");

/* "next": patch the immediately following instruction and run it. */
static __attribute__((noinline, noclone)) uint32_t smc_next(uint32_t v)
{
	uint32_t r;
	__asm__ volatile(
		"movl %1, 1f+1(%%rip)\n\t"
		"1: .byte 0xb8\n\t"      /* mov $imm32, %eax */
		".long 0\n\t"
		: "=&a"(r)
		: "r"(v)
		: "memory");
	return r;
}

static uint32_t mix(uint32_t mode, uint32_t i)
{
	uint32_t z = (mode << 28) ^ (i * 0x9E3779B9u) ^ 0x5bd1e995u;
	z ^= z >> 16;
	z *= 0x85ebca6bu;
	z ^= z >> 13;
	z *= 0xc2b2ae35u;
	z ^= z >> 16;
	return z;
}

static uint32_t fnv32(uint32_t h, uint32_t v)
{
	for (int k = 0; k < 4; k++) {
		h ^= (v >> (8 * k)) & 0xFF;
		h *= 0x01000193u;
	}
	return h;
}

static void check(struct result *r, const char *mode, uint32_t i, uint32_t got, uint32_t want)
{
	r->sum = fnv32(r->sum, got);
	if (got == want) {
		r->ok++;
		return;
	}
	r->bad++;
	if (r->reports++ < MAX_REPORTS)
		hvft_printf("smc: %s iter=%u got=0x%x want=0x%x\n", mode, i, got, want);
}

/* a value for iteration i that differs from the one of iteration i-1 */
static uint32_t value(uint32_t mode, uint32_t i, uint32_t prev)
{
	uint32_t v = mix(mode, i);
	if (v == prev)
		v ^= 1;
	return v;
}

static void run_same(struct result *r, uint32_t n)
{
	uint32_t prev = 0;
	(void)smc_same(0);   /* translate the stub */
	for (uint32_t i = 0; i < n; i++) {
		uint32_t v = value(1, i, prev);
		check(r, "same", i, smc_same(v), v);
		for (int c = 1; c < CALLS; c++)
			check(r, "same", i, smc_same_call(), v);
		prev = v;
	}
}

static void far_write(volatile uint8_t *stub, uint32_t v)
{
	stub[1] = (uint8_t)v;
	stub[2] = (uint8_t)(v >> 8);
	stub[3] = (uint8_t)(v >> 16);
	stub[4] = (uint8_t)(v >> 24);
}

static int run_other(struct result *r, uint32_t n)
{
	uintptr_t base = ((uintptr_t)__hvft_image_end + 2 * MIB - 1) & ~(MIB - 1);
	volatile uint8_t *stubs[FAR_STUBS];
	uint32_t prev[FAR_STUBS];

	if (base + FAR_STUBS * MIB + 64 * 1024 > hvft_ram_size()) {
		hvft_puts("smc: RAM too small for far stubs\n");
		return -1;
	}
	for (int k = 0; k < FAR_STUBS; k++) {
		/* a different offset in each MiB, so the stubs are not aliases
		 * of each other in any page-indexed structure either */
		volatile uint8_t *s = (volatile uint8_t *)(base + k * MIB + 0x340 * (k + 1));
		s[0] = 0xb8;          /* mov $imm32, %eax */
		far_write(s, 0);
		s[5] = 0xc3;          /* ret */
		stubs[k] = s;
		prev[k] = 0;
		(void)((uint32_t (*)(void))(uintptr_t)s)();   /* translate */
	}
	for (uint32_t i = 0; i < n; i++) {
		int k = (int)(i % FAR_STUBS);
		uint32_t v = value(2, i, prev[k]);
		uint32_t (*fn)(void) = (uint32_t (*)(void))(uintptr_t)stubs[k];
		far_write(stubs[k], v);
		for (int c = 0; c < CALLS; c++)
			check(r, "other", i, fn(), v);
		prev[k] = v;
	}
	return 0;
}

static void run_next(struct result *r, uint32_t n)
{
	uint32_t prev = 0;
	(void)smc_next(0);
	for (uint32_t i = 0; i < n; i++) {
		uint32_t v = value(3, i, prev);
		check(r, "next", i, smc_next(v), v);
		prev = v;
	}
}

/* returns 0 ok, 1 bad, 2 setup failure */
static int run_mode(const char *mode, uint32_t n)
{
	struct result r = { 0, 0, 0x811c9dc5u, 0 };

	if (hvft_strcmp(mode, "same") == 0) {
		run_same(&r, n);
	} else if (hvft_strcmp(mode, "other") == 0) {
		if (run_other(&r, n) != 0)
			return 2;
	} else if (hvft_strcmp(mode, "next") == 0) {
		run_next(&r, n);
	} else {
		hvft_printf("smc: unknown mode %s\n", mode);
		return 2;
	}
	hvft_printf("smc: %s ok=%u bad=%u sum=0x%08x\n", mode, r.ok, r.bad, r.sum);
	return r.bad ? 1 : 0;
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "all";
	uint32_t n = argc > 2 ? (uint32_t)hvft_atou(argv[2]) : 2000;
	int rc = 0;

	if (hvft_strcmp(mode, "all") == 0) {
		static const char *const modes[] = { "same", "other", "next" };
		for (int m = 0; m < 3; m++) {
			int x = run_mode(modes[m], n);
			if (x > rc)
				rc = x;
		}
	} else {
		rc = run_mode(mode, n);
	}
	if (rc == 2)
		return 2;
	hvft_puts(rc ? "smc FAILED\n" : "smc ok\n");
	return rc;
}
