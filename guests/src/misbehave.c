/*
 * misbehave: a guest that does what guests should not, to show the host
 * contains it. argv[1] = mode:
 *   write  - writes to 0x40000000, outside RAM (the run must stop with a fault)
 *   storm  - programs the timer at 1 us (the board clamps it) and takes
 *            argv[2] (default 2000) timer interrupts, then powers off 0
 *   flood  - prints to the console forever (bounded by --max-epochs/--timeout)
 */
#include "hvft.h"

static volatile uint64_t ticks;

static void on_tick(int irq)
{
	(void)irq;
	ticks++;
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "write";
	if (hvft_strcmp(mode, "write") == 0) {
		hvft_puts("misbehave: writing outside RAM\n");
		*(volatile uint64_t *)(uintptr_t)0x40000000ull = 1;
		return 2;
	}
	if (hvft_strcmp(mode, "storm") == 0) {
		uint64_t want = argc > 2 ? hvft_atou(argv[2]) : 2000;
		hvft_set_irq_handler(HVFT_IRQ_TIMER, on_tick);
		hvft_timer_set_period_us(1);
		hvft_irq_unmask(HVFT_IRQ_TIMER);
		for (;;) {
			hvft_cli();
			if (ticks >= want)
				break;
			hvft_wait_for_interrupt();
		}
		hvft_timer_set_period_us(0);
		hvft_printf("misbehave: storm of %lu interrupts survived\n", (unsigned long)ticks);
		return 0;
	}
	if (hvft_strcmp(mode, "flood") == 0) {
		for (uint64_t i = 0;; i++)
			hvft_printf("flood %lu\n", (unsigned long)i);
	}
	hvft_printf("misbehave: unknown mode %s\n", mode);
	return 5;
}
