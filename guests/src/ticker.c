/*
 * ticker: periodic timer interrupts.
 *
 *   args: argv[1] = T, number of ticks (default 200)
 *         argv[2] = P, timer period in microseconds (default 10000)
 *
 * Programs TIMER_PERIOD = P, installs an IRQ 0 handler, unmasks IRQ 0 and
 * waits with hvft_wait_for_interrupt() ("sti; hlt") in a loop. Every call of
 * the IRQ 0 handler is one tick: it reads the clock (hvft_clock_ns: CLOCK_LO
 * then CLOCK_HI) and then one hvft_random32() (RANDOM port), folds both into
 * the running checksum and prints exactly one line:
 *
 *   tick <N> clock=<ns, decimal> rand=<8 lowercase hex> sum=<16 lowercase hex>
 *
 * with N counting from 1. After T ticks the timer is stopped and the guest
 * powers off with 0. Nothing else is printed.
 *
 * Checksum (recomputable from the printed lines alone):
 *   sum is 64-bit FNV-1a (offset basis 0xcbf29ce484222325, prime
 *   0x100000001b3: for each byte b, sum ^= b; sum *= prime) over, in tick
 *   order 1..N, for each tick: the 8 little-endian bytes of clock (uint64)
 *   followed by the 4 little-endian bytes of rand (uint32).
 *   The sum printed on tick N covers ticks 1..N (including tick N).
 */
#include "hvft.h"

#define FNV_OFFSET 0xcbf29ce484222325ULL
#define FNV_PRIME  0x100000001b3ULL

static volatile uint32_t ticks;
static uint64_t sum = FNV_OFFSET;

static uint64_t fnv1a_le(uint64_t h, uint64_t v, int nbytes)
{
	for (int i = 0; i < nbytes; i++) {
		h ^= (v >> (8 * i)) & 0xFF;
		h *= FNV_PRIME;
	}
	return h;
}

static uint32_t target;

static void on_timer(int irq)
{
	(void)irq;
	/* The loop in main checks the count with IF=0, but between the iretq
	 * that ends a halt and its cli, IF is 1 and one more tick can land
	 * (the board delivers at epoch boundaries, and with short epochs one
	 * falls there): ticks past the target are not counted. */
	if (ticks >= target)
		return;
	uint64_t clock = hvft_clock_ns();
	uint32_t rnd = hvft_random32();
	uint32_t n = ticks + 1;

	sum = fnv1a_le(sum, clock, 8);
	sum = fnv1a_le(sum, rnd, 4);
	ticks = n;
	hvft_printf("tick %u clock=%lu rand=%08x sum=%016lx\n", n, clock, rnd, sum);
}

int main(int argc, char **argv)
{
	target = argc > 1 ? (uint32_t)hvft_atou(argv[1]) : 200;
	uint32_t period = argc > 2 ? (uint32_t)hvft_atou(argv[2]) : 10000;

	if (target == 0)
		return 0;
	if (period == 0)
		period = 10000;

	hvft_set_irq_handler(HVFT_IRQ_TIMER, on_timer);
	hvft_timer_set_period_us(period);
	hvft_irq_unmask(HVFT_IRQ_TIMER);

	for (;;) {
		/* check with IF=0 so a tick cannot slip in between the check and
		 * the halt (which would print one tick too many) */
		hvft_cli();
		if (ticks >= target)
			break;
		hvft_wait_for_interrupt();   /* sti; hlt: returns after one IRQ */
	}

	hvft_irq_mask(HVFT_IRQ_TIMER);
	hvft_timer_set_period_us(0);
	return 0;
}
