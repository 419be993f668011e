/*
 * smcdata: code and data on one page. A stub "mov $imm32, %eax; ret" sits
 * at the start of a page-aligned buffer and a counter in the same page;
 * every iteration patches the immediate and bumps the counter (in both
 * orders), then calls the stub, which must return the new value. x86
 * detects stores into the instruction stream, so every call returns what
 * was last stored, whatever the machine's TLB does.
 *
 *   args: argv[1] = N, iterations (default 3000)
 *
 * Output:
 *   smcdata: ok=<n> stale=<n> counter=<n> sum=0x<8 hex>
 *   smcdata ok                 -> power off 0
 *   smcdata FAILED             -> power off 1
 * The first few stale results are also printed:
 *   smcdata: iter=<i> got=0x<hex> want=0x<hex>
 */
#include "hvft.h"

static uint8_t page[2 * 4096] __attribute__((aligned(4096)));

static uint32_t mix(uint32_t i)
{
	uint32_t z = i * 0x9E3779B9u ^ 0x7f4a7c15u;
	z ^= z >> 15;
	z *= 0x2c1b3c6du;
	z ^= z >> 12;
	return z | 1;
}

static void patch(volatile uint8_t *stub, uint32_t v)
{
	stub[1] = (uint8_t)v;
	stub[2] = (uint8_t)(v >> 8);
	stub[3] = (uint8_t)(v >> 16);
	stub[4] = (uint8_t)(v >> 24);
}

int main(int argc, char **argv)
{
	uint32_t n = argc > 1 ? (uint32_t)hvft_atou(argv[1]) : 3000;
	volatile uint8_t *stub = page;
	volatile uint64_t *counter = (volatile uint64_t *)(page + 0x800);
	uint32_t (*fn)(void) = (uint32_t (*)(void))(uintptr_t)page;
	uint32_t ok = 0, stale = 0, sum = 0x811c9dc5u, reports = 0;

	stub[0] = 0xb8; /* mov $imm32, %eax */
	patch(stub, 0);
	stub[5] = 0xc3; /* ret */
	(void)fn();     /* translate it */
	for (uint32_t i = 0; i < n; i++) {
		uint32_t v = mix(i);
		if (i & 1) {
			*counter += 1;
			patch(stub, v);
		} else {
			patch(stub, v);
			*counter += 1;
		}
		uint32_t got = fn();
		sum = (sum ^ got) * 0x01000193u;
		if (got == v) {
			ok++;
		} else {
			stale++;
			if (reports++ < 5)
				hvft_printf("smcdata: iter=%u got=0x%x want=0x%x\n", i, got, v);
		}
	}
	hvft_printf("smcdata: ok=%u stale=%u counter=%u sum=0x%x\n", ok, stale, (unsigned)*counter, sum);
	hvft_puts(stale ? "smcdata FAILED\n" : "smcdata ok\n");
	return stale ? 1 : 0;
}
