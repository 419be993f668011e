/*
 * dmamask: a disk READ with the disk's interrupt masked, over a routine
 * that a spin then keeps calling without any I/O. The transfer lands in
 * RAM at an epoch boundary whether or not its interrupt is masked, so the
 * spin must see the new routine's result within a bounded number of
 * iterations, and every call must run the routine RAM holds.
 *
 *   args: argv[1] = spins allowed (default 200000000)
 *
 * Needs a disk (hvft run --disk FILE). Output:
 *   dmamask: landed=<0|1> spins=<1e6|>=1e6>
 *   dmamask ok                 -> power off 0
 *   dmamask FAILED             -> power off 1
 * Without a disk: "dmamask: no disk", power off 2.
 */
#include "hvft.h"

static uint8_t buf[512] __attribute__((aligned(4096)));

/* mov $v, %eax; ret */
static void routine(uint8_t *b, uint8_t v)
{
	b[0] = 0xb8;
	b[1] = v;
	b[2] = b[3] = b[4] = 0;
	b[5] = 0xc3;
}

int main(int argc, char **argv)
{
	uint64_t limit = argc > 1 ? hvft_atou(argv[1]) : 200000000ull;
	volatile uint8_t *b = buf;

	if (hvft_disk_sectors() <= 0) {
		hvft_puts("dmamask: no disk\n");
		return 2;
	}
	uint32_t (*fn)(void) = (uint32_t (*)(void))(uintptr_t)buf;
	for (int i = 0; i < 512; i++)
		buf[i] = (uint8_t)(i * 7 + 1);
	routine(buf, 2);
	if (hvft_disk_write(3, buf, 1) != 0) {
		hvft_puts("dmamask: write failed\n");
		return 1;
	}
	for (int i = 0; i < 512; i++)
		buf[i] = 0;
	routine(buf, 1);
	if (fn() != 1) {
		hvft_puts("dmamask: the routine does not run\n");
		return 1;
	}
	hvft_irq_mask(HVFT_IRQ_DISK);
	hvft_outl(HVFT_PORT_DISK_SECTOR, 3);
	hvft_outl(HVFT_PORT_DISK_BUFFER, (uint32_t)(uintptr_t)buf);
	hvft_outl(HVFT_PORT_DISK_COUNT, 1);
	hvft_outl(HVFT_PORT_DISK_COMMAND, HVFT_DISK_CMD_READ);
	uint64_t spins = 0;
	uint32_t got = 1;
	while (spins < limit && (got = fn()) == 1)
		spins++;
	/* the call that saw the new routine must agree with RAM */
	int landed = got == 2 && b[511] == (uint8_t)(511 * 7 + 1);
	hvft_printf("dmamask: landed=%d spins=%s\n", landed, spins < 1000000 ? "<1e6" : ">=1e6");
	hvft_puts(landed ? "dmamask ok\n" : "dmamask FAILED\n");
	return landed ? 0 : 1;
}
