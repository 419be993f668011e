/*
 * dmamask: a disk READ with the disk's interrupt masked, then a spin that
 * polls RAM without any I/O. The transfer lands in RAM at an epoch
 * boundary whether or not its interrupt is masked, so the spin must see
 * the data within a bounded number of iterations.
 *
 *   args: argv[1] = spins allowed (default 200000000)
 *
 * Needs a disk (hvft run --disk FILE). Output:
 *   dmamask: landed=<0|1> spins=<n>
 *   dmamask ok                 -> power off 0
 *   dmamask FAILED             -> power off 1
 * Without a disk: "dmamask: no disk", power off 2.
 */
#include "hvft.h"

static uint8_t buf[512] __attribute__((aligned(64)));

int main(int argc, char **argv)
{
	uint64_t limit = argc > 1 ? hvft_atou(argv[1]) : 200000000ull;
	volatile uint8_t *b = buf;

	if (hvft_disk_sectors() <= 0) {
		hvft_puts("dmamask: no disk\n");
		return 2;
	}
	for (int i = 0; i < 512; i++)
		buf[i] = (uint8_t)(i * 7 + 1);
	if (hvft_disk_write(3, buf, 1) != 0) {
		hvft_puts("dmamask: write failed\n");
		return 1;
	}
	for (int i = 0; i < 512; i++)
		buf[i] = 0;
	hvft_irq_mask(HVFT_IRQ_DISK);
	hvft_outl(HVFT_PORT_DISK_SECTOR, 3);
	hvft_outl(HVFT_PORT_DISK_BUFFER, (uint32_t)(uintptr_t)buf);
	hvft_outl(HVFT_PORT_DISK_COUNT, 1);
	hvft_outl(HVFT_PORT_DISK_COMMAND, HVFT_DISK_CMD_READ);
	uint64_t spins = 0;
	while (spins < limit && b[511] != (uint8_t)(511 * 7 + 1))
		spins++;
	int landed = b[511] == (uint8_t)(511 * 7 + 1);
	hvft_printf("dmamask: landed=%d spins=%s\n", landed, spins < 1000000 ? "<1e6" : ">=1e6");
	hvft_puts(landed ? "dmamask ok\n" : "dmamask FAILED\n");
	return landed ? 0 : 1;
}
