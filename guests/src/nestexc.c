/*
 * nestexc: thousands of exceptions, some raised inside exception and IRQ
 * handlers, while the periodic timer runs at a short period. Every
 * exception must arrive at its own vector with the saved RIP at (for #BP:
 * right after) the instruction that raised it; none may arrive as #DF.
 *
 *   args: argv[1] = N, iterations (default 5000)
 *         argv[2] = P, timer period in microseconds (default 100)
 *
 * The main loop runs with IF = 1. Iteration i (0..N-1) executes
 *   div %rcx with RCX = 0   (48 f7 f1, 3 bytes)   -> #DE (0), handler skips 3
 *   ud2                     (0f 0b, 2 bytes)      -> #UD (6), handler skips 2
 *   int3                    (cc, 1 byte, a trap)  -> #BP (3), RIP already past it
 * and nests, depending on i % 8:
 *   i % 8 == 0: the #DE handler executes ud2   (a #UD inside #DE)
 *   i % 8 == 2: the #UD handler executes int3  (a #BP inside #UD)
 *   i % 8 == 4: the #DE handler divides by zero again (a #DE inside #DE)
 *   i % 8 == 6: the #BP handler executes ud2, and that #UD handler
 *               executes int3                   (three levels)
 * Each timer IRQ handler counts a tick and executes int3 (a #BP inside an
 * IRQ handler). Handlers run with IF = 0 (interrupt gates), so nothing
 * nests unless asked to. Every raise site is checked: the handler reads the
 * instruction bytes at (or, for #BP, just before) the saved RIP, checks
 * the nesting depth and the vector of the handler it is nested in, and the
 * main loop checks that the registers the faulting asm holds (RAX, RDX, and
 * a marker in RBX) survive. #DF (8) and every other vector 0..31 get a
 * handler that prints "nestexc: unexpected #<v> at rip=<hex>", the counts
 * so far and "nestexc FAILED", and powers off with 1 at once (RIP is not
 * meaningful to resume at). A handler that finds the wrong instruction at
 * its RIP also stops at once, printing
 *   nestexc: vector <v> at rip=<hex> is not at its instruction
 *
 * Output:
 *   nestexc: iters=<N> de=<n> ud=<n> bp=<n> nested=<n> ticks=<T> df=0 bad=<n> sum=0x<8 hex>
 *   nestexc ok                    -> power off 0
 *   nestexc FAILED                -> power off 1
 * de/ud/bp count all deliveries (bp includes the T from the IRQ handler);
 * nested counts exceptions raised inside a handler, IRQ ones included. The
 * expected counts follow from N and T; bad counts mismatches (nesting depth,
 * parent vector, clobbered registers, a count that differs from the
 * expected one, a sum that differs from the model's). sum is FNV-1a-32
 * over (vector, depth, parent, i) of every exception raised outside the IRQ
 * handler, in order (parent = vector of the handler it was raised in, 0xff
 * at depth 0): the same on every correct run for a given N, whatever T is
 * (N = 5000: 0x3af10043); main recomputes it from a model of the sequence.
 */
#include "hvft.h"

#define MAX_DEPTH 8

static volatile uint32_t cur_iter;
static volatile uint32_t depth;
static volatile uint32_t in_irq;
static uint32_t stack_vec[MAX_DEPTH];   /* vector of the handler at each depth */

static volatile uint32_t cnt_de, cnt_ud, cnt_bp, cnt_nested, ticks;
static volatile uint32_t bad;
static uint32_t sum = 0x811c9dc5u;

static uint32_t fnv32(uint32_t h, uint32_t v)
{
	for (int k = 0; k < 4; k++) {
		h ^= (v >> (8 * k)) & 0xFF;
		h *= 0x01000193u;
	}
	return h;
}

static uint32_t fold4(uint32_t h, uint32_t vec, uint32_t d, uint32_t parent, uint32_t i)
{
	return fnv32(fnv32(fnv32(fnv32(h, vec), d), parent), i);
}

static void summary(void)
{
	hvft_printf("nestexc: iters=%u de=%u ud=%u bp=%u nested=%u ticks=%u df=%u bad=%u sum=0x%08x\n",
		    cur_iter, cnt_de, cnt_ud, cnt_bp, cnt_nested, ticks, 0u, bad, sum);
}

/* ---- the raising instructions (fixed encodings) ---------------------- */

#define MARK 0x5a5a1234cafe0001ULL

/* div %rcx with RCX = 0; checks that RAX, RDX and RBX survive */
static __attribute__((noinline)) void raise_de(void)
{
	uint64_t a = 0x1111222233334444ULL, d = 0, c = 0, b = MARK;
	__asm__ volatile(".byte 0x48, 0xf7, 0xf1"   /* div %rcx */
			 : "+a"(a), "+d"(d), "+c"(c), "+b"(b) : : "memory", "cc");
	if (a != 0x1111222233334444ULL || d != 0 || c != 0 || b != MARK)
		bad++;
}

static __attribute__((noinline)) void raise_ud(void)
{
	uint64_t a = 0x5555666677778888ULL, b = MARK ^ 6;
	__asm__ volatile("ud2" : "+a"(a), "+b"(b) : : "memory");
	if (a != 0x5555666677778888ULL || b != (MARK ^ 6))
		bad++;
}

static __attribute__((noinline)) void raise_bp(void)
{
	uint64_t a = 0x9999aaaabbbbccccULL, b = MARK ^ 3;
	__asm__ volatile("int3" : "+a"(a), "+b"(b) : : "memory");
	if (a != 0x9999aaaabbbbccccULL || b != (MARK ^ 3))
		bad++;
}

/* ---- handlers --------------------------------------------------------- */

static __attribute__((noreturn)) void stop_not_at(struct hvft_frame *f)
{
	hvft_printf("nestexc: vector %lu at rip=%lx is not at its instruction\n", f->vector, f->rip);
	summary();
	hvft_puts("nestexc FAILED\n");
	hvft_poweroff(1);
}

/* common entry: checks the depth, records the exception, returns the
 * parent handler's vector (or 0xFF at depth 0, 0x20 in the IRQ handler) */
static uint32_t enter(uint32_t vec, uint32_t want_parent)
{
	uint32_t d = depth;
	uint32_t parent = d == 0 ? (in_irq ? 0x20u : 0xFFu) : stack_vec[d - 1];

	if (d >= MAX_DEPTH - 1) {
		hvft_printf("nestexc: depth %u too deep\n", d);
		summary();
		hvft_puts("nestexc FAILED\n");
		hvft_poweroff(1);
	}
	if (parent != want_parent)
		bad++;
	if (d > 0 || in_irq)
		cnt_nested++;
	if (!in_irq)
		sum = fold4(sum, vec, d, parent, cur_iter);
	stack_vec[d] = vec;
	depth = d + 1;
	return parent;
}

static void leave(void)
{
	depth = depth - 1;
}

/* what the handler at the top of the stack expects as its parent */
static uint32_t expected_parent(uint32_t vec)
{
	uint32_t i = cur_iter, d = depth;
	if (in_irq)
		return d == 0 ? 0x20u : 0xFFu;   /* only int3 at depth 0 in IRQs */
	if (d == 0)
		return 0xFFu;
	switch (i % 8) {
	case 0: return vec == HVFT_EXC_UD ? HVFT_EXC_DE : 0xFEu;
	case 2: return vec == HVFT_EXC_BP ? HVFT_EXC_UD : 0xFEu;
	case 4: return vec == HVFT_EXC_DE ? HVFT_EXC_DE : 0xFEu;
	case 6:
		if (d == 1 && vec == HVFT_EXC_UD)
			return HVFT_EXC_BP;
		if (d == 2 && vec == HVFT_EXC_BP)
			return HVFT_EXC_UD;
		return 0xFEu;
	}
	return 0xFEu;
}

static void on_de(struct hvft_frame *f)
{
	const uint8_t *p = (const uint8_t *)f->rip;
	uint32_t d;

	if (p[0] != 0x48 || p[1] != 0xf7 || p[2] != 0xf1)
		stop_not_at(f);
	cnt_de++;
	d = depth;
	enter(HVFT_EXC_DE, expected_parent(HVFT_EXC_DE));
	if (d == 0 && !in_irq) {
		if (cur_iter % 8 == 0)
			raise_ud();
		else if (cur_iter % 8 == 4)
			raise_de();
	}
	leave();
	f->rip += 3;
}

static void on_ud(struct hvft_frame *f)
{
	const uint8_t *p = (const uint8_t *)f->rip;
	uint32_t d;

	if (p[0] != 0x0f || p[1] != 0x0b)
		stop_not_at(f);
	cnt_ud++;
	d = depth;
	enter(HVFT_EXC_UD, expected_parent(HVFT_EXC_UD));
	if (!in_irq && ((d == 0 && cur_iter % 8 == 2) || (d == 1 && cur_iter % 8 == 6)))
		raise_bp();
	leave();
	f->rip += 2;
}

static void on_bp(struct hvft_frame *f)
{
	const uint8_t *p = (const uint8_t *)f->rip;
	uint32_t d;

	if (p[-1] != 0xcc)
		stop_not_at(f);
	cnt_bp++;
	d = depth;
	enter(HVFT_EXC_BP, expected_parent(HVFT_EXC_BP));
	if (!in_irq && d == 0 && cur_iter % 8 == 6)
		raise_ud();
	leave();
	/* int3 is a trap: the saved RIP is already past it */
}

static void on_other(struct hvft_frame *f)
{
	hvft_printf("nestexc: unexpected #%lu at rip=%lx (error code %lx, depth %u)\n",
		    f->vector, f->rip, f->error_code, depth);
	summary();
	hvft_puts("nestexc FAILED\n");
	hvft_poweroff(1);
}

/* the sum a correct run folds: the handlers' entries in raising order */
static uint32_t model_sum(uint32_t n)
{
	uint32_t h = 0x811c9dc5u;
	for (uint32_t i = 0; i < n; i++) {
		h = fold4(h, HVFT_EXC_DE, 0, 0xFF, i);
		if (i % 8 == 0)
			h = fold4(h, HVFT_EXC_UD, 1, HVFT_EXC_DE, i);
		if (i % 8 == 4)
			h = fold4(h, HVFT_EXC_DE, 1, HVFT_EXC_DE, i);
		h = fold4(h, HVFT_EXC_UD, 0, 0xFF, i);
		if (i % 8 == 2)
			h = fold4(h, HVFT_EXC_BP, 1, HVFT_EXC_UD, i);
		h = fold4(h, HVFT_EXC_BP, 0, 0xFF, i);
		if (i % 8 == 6) {
			h = fold4(h, HVFT_EXC_UD, 1, HVFT_EXC_BP, i);
			h = fold4(h, HVFT_EXC_BP, 2, HVFT_EXC_UD, i);
		}
	}
	return h;
}

static void on_timer(int irq)
{
	(void)irq;
	ticks++;
	in_irq = 1;
	raise_bp();
	in_irq = 0;
}

int main(int argc, char **argv)
{
	uint32_t n = argc > 1 ? (uint32_t)hvft_atou(argv[1]) : 5000;
	uint32_t period = argc > 2 ? (uint32_t)hvft_atou(argv[2]) : 100;
	uint32_t want_de, want_ud, want_bp, want_nested, want_sum, t;

	if (period == 0)
		period = 100;
	for (int v = 0; v < 32; v++)
		hvft_set_exception_handler(v, on_other);
	hvft_set_exception_handler(HVFT_EXC_DE, on_de);
	hvft_set_exception_handler(HVFT_EXC_UD, on_ud);
	hvft_set_exception_handler(HVFT_EXC_BP, on_bp);
	hvft_set_irq_handler(HVFT_IRQ_TIMER, on_timer);
	hvft_timer_set_period_us(period);
	hvft_irq_unmask(HVFT_IRQ_TIMER);
	hvft_sti();

	for (uint32_t i = 0; i < n; i++) {
		cur_iter = i;
		raise_de();
		raise_ud();
		raise_bp();
	}

	hvft_cli();
	cur_iter = n;
	hvft_irq_mask(HVFT_IRQ_TIMER);
	hvft_timer_set_period_us(0);
	t = ticks;

	/* expected counts: per block of 8 iterations one extra #UD (i%8==0),
	 * one extra #BP (i%8==2), one extra #DE (i%8==4) and one extra #UD and
	 * #BP (i%8==6); plus one #BP per tick */
	want_de = n;
	want_ud = n;
	want_bp = n + t;
	want_nested = t;
	for (uint32_t i = 0; i < n; i++) {
		switch (i % 8) {
		case 0: want_ud++; want_nested++; break;
		case 2: want_bp++; want_nested++; break;
		case 4: want_de++; want_nested++; break;
		case 6: want_ud++; want_bp++; want_nested += 2; break;
		}
	}
	want_sum = model_sum(n);
	if (cnt_de != want_de || cnt_ud != want_ud || cnt_bp != want_bp ||
	    cnt_nested != want_nested || depth != 0 || sum != want_sum) {
		hvft_printf("nestexc: want de=%u ud=%u bp=%u nested=%u sum=0x%08x\n",
			    want_de, want_ud, want_bp, want_nested, want_sum);
		bad++;
	}
	summary();
	if (bad) {
		hvft_puts("nestexc FAILED\n");
		return 1;
	}
	hvft_puts("nestexc ok\n");
	return 0;
}
