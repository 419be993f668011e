/*
 * diskbad: issues bad disk commands through the raw ports and shows that
 * each one gets an error status (or is refused) and that nothing already
 * written is damaged. Prints one line per case, then "diskbad ok".
 */
#include "hvft.h"

static volatile uint32_t completions;
static uint8_t buf[2 * HVFT_SECTOR_SIZE] __attribute__((aligned(512)));

static void on_disk(int irq)
{
	(void)irq;
	completions++;
}

/* Issues one raw command and waits for its completion IRQ; returns the
 * status read right after the command and after the completion. */
static uint32_t raw(uint32_t cmd, uint32_t sector, uint64_t buffer, uint32_t count, uint32_t *first)
{
	uint32_t seen, st;

	hvft_cli();
	seen = completions;
	hvft_outl(HVFT_PORT_DISK_SECTOR, sector);
	hvft_outl(HVFT_PORT_DISK_BUFFER, (uint32_t)buffer);
	hvft_outl(HVFT_PORT_DISK_COUNT, count);
	hvft_outl(HVFT_PORT_DISK_COMMAND, cmd);
	st = hvft_inl(HVFT_PORT_DISK_STATUS);
	if (first)
		*first = st;
	for (;;) {
		hvft_cli();
		if (completions != seen)
			break;
		hvft_wait_for_interrupt();
	}
	return hvft_inl(HVFT_PORT_DISK_STATUS);
}

int main(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	uint32_t sectors = (uint32_t)hvft_disk_sectors();
	uint64_t ram = hvft_bootinfo()->ram_size;
	uint32_t st, first;
	int bad = 0;

	if (sectors == 0) {
		hvft_puts("diskbad: no disk\n");
		hvft_poweroff(2);
	}
	hvft_set_irq_handler(HVFT_IRQ_DISK, on_disk);
	hvft_irq_unmask(HVFT_IRQ_DISK);

	memset(buf, 'G', HVFT_SECTOR_SIZE);
	st = raw(HVFT_DISK_CMD_WRITE, 1, (uint64_t)(uintptr_t)buf, 1, 0);
	hvft_printf("diskbad write sector 1 status=%u\n", st);
	bad |= st != HVFT_DISK_ST_OK;

	st = raw(HVFT_DISK_CMD_READ, sectors, (uint64_t)(uintptr_t)buf, 1, 0);
	hvft_printf("diskbad beyond-end status=%u\n", st);
	bad |= st != HVFT_DISK_ST_ERROR;

	st = raw(HVFT_DISK_CMD_WRITE, 1, ram - 256, 1, 0);
	hvft_printf("diskbad dma-outside-ram status=%u\n", st);
	bad |= st != HVFT_DISK_ST_ERROR;

	st = raw(HVFT_DISK_CMD_READ, 1, (uint64_t)(uintptr_t)buf, 0, 0);
	hvft_printf("diskbad count-zero status=%u\n", st);
	bad |= st != HVFT_DISK_ST_ERROR;

	st = raw(HVFT_DISK_CMD_READ, 1, (uint64_t)(uintptr_t)buf, 129, 0);
	hvft_printf("diskbad count-too-big status=%u\n", st);
	bad |= st != HVFT_DISK_ST_ERROR;

	/* A second command while the first is in flight: refused, and the
	 * first (a write of 'X' that must not happen) is replaced by nothing. */
	hvft_cli();
	{
		uint32_t seen = completions;
		memset(buf + HVFT_SECTOR_SIZE, 'R', HVFT_SECTOR_SIZE);
		hvft_outl(HVFT_PORT_DISK_SECTOR, 2);
		hvft_outl(HVFT_PORT_DISK_BUFFER, (uint32_t)(uintptr_t)(buf + HVFT_SECTOR_SIZE));
		hvft_outl(HVFT_PORT_DISK_COUNT, 1);
		hvft_outl(HVFT_PORT_DISK_COMMAND, HVFT_DISK_CMD_WRITE);
		hvft_outl(HVFT_PORT_DISK_SECTOR, 1);
		hvft_outl(HVFT_PORT_DISK_COMMAND, HVFT_DISK_CMD_WRITE); /* while busy */
		first = hvft_inl(HVFT_PORT_DISK_STATUS);
		for (;;) {
			hvft_cli();
			if (completions != seen)
				break;
			hvft_wait_for_interrupt();
		}
		st = hvft_inl(HVFT_PORT_DISK_STATUS);
	}
	hvft_printf("diskbad busy refused=%u status=%u\n", (first & HVFT_DISK_REFUSED) ? 1u : 0u, st & HVFT_DISK_ST_MASK);
	bad |= !(first & HVFT_DISK_REFUSED) || (st & HVFT_DISK_ST_MASK) != HVFT_DISK_ST_OK;

	memset(buf, 0, sizeof buf);
	st = raw(HVFT_DISK_CMD_READ, 1, (uint64_t)(uintptr_t)buf, 2, 0);
	for (int i = 0; i < HVFT_SECTOR_SIZE; i++) {
		if (buf[i] != 'G' || buf[HVFT_SECTOR_SIZE + i] != 'R') {
			hvft_printf("diskbad sectors damaged at byte %d\n", i);
			hvft_poweroff(1);
		}
	}
	hvft_printf("diskbad read back status=%u: sector 1 intact, sector 2 written once\n", st);
	if (bad) {
		hvft_puts("diskbad FAILED\n");
		hvft_poweroff(1);
	}
	hvft_puts("diskbad ok\n");
	return 0;
}
