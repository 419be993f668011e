/*
 * stishadow: the STI interrupt shadow. When STI sets IF (it was 0), x86
 * recognizes no maskable interrupt until the instruction after STI has
 * completed. So an IRQ must never be taken with its saved RIP at the
 * instruction right after an STI that enabled interrupts.
 *
 *   args: argv[1] = N, window loop iterations (default 100000)
 *         argv[2] = H, "sti; hlt" waits (default 200)
 *         argv[3] = P, timer period in microseconds (default 50)
 *
 * The timer IRQ (vector 32) goes to this guest's own stub (IDT gate 32 is
 * replaced), which hands the hardware frame to C: the handler counts a
 * tick, checks that the saved RFLAGS has IF = 1, classifies the saved RIP
 * and sends the EOI.
 *
 * Phase 1, N iterations of four windows (asm, interrupts off elsewhere):
 *     cli; sti; s1: add %ecx,%eax;          o1: cli; rol $5,%eax
 *          sti; s2: xor $0x5bd1e995,%eax;   o2: cli; inc %ecx
 *          sti; s3: jmp o3;                 o3: cli
 *          sti; s4: nop;                    o4: cli; loop
 * An IRQ with RIP = s1..s4 is a violation (taken inside the shadow); RIP =
 * o1..o4 is a legal one ("taken"). The loop's result (EAX) is checked
 * against the same computation in C.
 * Phase 2, H times: "sti; hs: hlt; ho: cli" (hvft_wait_for_interrupt's
 * pattern). RIP = hs is a violation (taken between sti and hlt: the wakeup
 * would be lost); RIP = ho is the expected wakeup ("woke"). Every wait must
 * return, each woken at ho (woke >= H: a second IRQ may also be taken at
 * ho, IF being 1 again after the first one's iretq).
 * Any other RIP (an IRQ while IF = 0 cannot have one) counts as stray.
 *
 * Output:
 *   stishadow: iters=<N> windows=<4N> taken=<n> violations=<n> hlt=<H> woke=<n> hltviol=<n> stray=<n> ifclear=<n> ticks=<n> acc=0x<8 hex>
 *   stishadow ok              -> power off 0
 *   stishadow FAILED          -> power off 1
 * The first few violations are printed as
 *   stishadow: violation at s<k> (rip=<hex>)
 * acc is the loop's EAX (a function of N only); it differs from the C
 * model only if an interrupt clobbered a register ("stishadow: acc ... want ...").
 */
#include "hvft.h"

#define MAX_REPORTS 5

/* phase 1: uint32_t sti_windows(uint64_t n); phase 2: void sti_hlt(void);
 * irq0_entry: gate 32. Labels are global so C can compare RIPs. */
uint32_t sti_windows(uint64_t n);
void sti_hlt(void);
void irq0_entry(void);
extern const char sti_s1[], sti_s2[], sti_s3[], sti_s4[];
extern const char sti_o1[], sti_o2[], sti_o3[], sti_o4[];
extern const char sti_hs[], sti_ho[];
void stishadow_irq(uint64_t *hw);

__asm__(
	".text\n"
	".p2align 4\n"
	".globl sti_windows\n"
	"sti_windows:\n"
	"	xorl %eax, %eax\n"
	"	movl $1, %ecx\n"
	"	testq %rdi, %rdi\n"
	"	jz 2f\n"
	"1:	cli\n"
	"	sti\n"
	".globl sti_s1\n"
	"sti_s1: addl %ecx, %eax\n"
	".globl sti_o1\n"
	"sti_o1: cli\n"
	"	roll $5, %eax\n"
	"	sti\n"
	".globl sti_s2\n"
	"sti_s2: xorl $0x5bd1e995, %eax\n"
	".globl sti_o2\n"
	"sti_o2: cli\n"
	"	incl %ecx\n"
	"	sti\n"
	".globl sti_s3\n"
	"sti_s3: jmp sti_o3\n"
	".globl sti_o3\n"
	"sti_o3: cli\n"
	"	sti\n"
	".globl sti_s4\n"
	"sti_s4: nop\n"
	".globl sti_o4\n"
	"sti_o4: cli\n"
	"	decq %rdi\n"
	"	jnz 1b\n"
	"2:	ret\n"
	"\n"
	".p2align 4\n"
	".globl sti_hlt\n"
	"sti_hlt:\n"
	"	sti\n"
	".globl sti_hs\n"
	"sti_hs: hlt\n"
	".globl sti_ho\n"
	"sti_ho: cli\n"
	"	ret\n"
	"\n"
	/* IRQ 0 stub: save the caller-saved registers (and rbx, used to
	 * realign the stack), call stishadow_irq(&hw frame), restore, iretq */
	".p2align 4\n"
	".globl irq0_entry\n"
	"irq0_entry:\n"
	"	pushq %rax\n"
	"	pushq %rcx\n"
	"	pushq %rdx\n"
	"	pushq %rsi\n"
	"	pushq %rdi\n"
	"	pushq %r8\n"
	"	pushq %r9\n"
	"	pushq %r10\n"
	"	pushq %r11\n"
	"	pushq %rbx\n"
	"	cld\n"
	"	leaq 80(%rsp), %rdi\n"       /* RIP, CS, RFLAGS, RSP, SS */
	"	movq %rsp, %rbx\n"
	"	andq $-16, %rsp\n"
	"	call stishadow_irq\n"
	"	movq %rbx, %rsp\n"
	"	popq %rbx\n"
	"	popq %r11\n"
	"	popq %r10\n"
	"	popq %r9\n"
	"	popq %r8\n"
	"	popq %rdi\n"
	"	popq %rsi\n"
	"	popq %rdx\n"
	"	popq %rcx\n"
	"	popq %rax\n"
	"	iretq\n");

static volatile uint32_t ticks, taken, violations, woke, hltviol, stray, ifclear, reports;

void stishadow_irq(uint64_t *hw)
{
	uint64_t rip = hw[0], rflags = hw[2];
	const char *p = (const char *)rip;

	ticks++;
	if (!(rflags & 0x200))
		ifclear++;
	if (p == sti_o1 || p == sti_o2 || p == sti_o3 || p == sti_o4) {
		taken++;
	} else if (p == sti_s1 || p == sti_s2 || p == sti_s3 || p == sti_s4) {
		violations++;
		if (reports++ < MAX_REPORTS)
			hvft_printf("stishadow: violation at s%d (rip=%lx)\n",
				    p == sti_s1 ? 1 : p == sti_s2 ? 2 : p == sti_s3 ? 3 : 4, rip);
	} else if (p == sti_ho) {
		woke++;
	} else if (p == sti_hs) {
		hltviol++;
		if (reports++ < MAX_REPORTS)
			hvft_printf("stishadow: violation at hlt (rip=%lx)\n", rip);
	} else {
		stray++;
		if (reports++ < MAX_REPORTS)
			hvft_printf("stishadow: stray IRQ at rip=%lx rflags=%lx\n", rip, rflags);
	}
	hvft_eoi(HVFT_IRQ_TIMER);
}

static uint32_t model(uint64_t n)
{
	uint32_t a = 0, c = 1;
	for (uint64_t i = 0; i < n; i++) {
		a += c;
		a = (a << 5) | (a >> 27);
		a ^= 0x5bd1e995u;
		c++;
	}
	return a;
}

static void set_gate(int vec, void (*fn)(void))
{
	uint64_t a = (uint64_t)(uintptr_t)fn;
	struct hvft_idt_gate *g = &hvft_idt[vec];
	g->offset_lo = (uint16_t)a;
	g->selector = HVFT_SEL_CODE;
	g->ist = 0;
	g->type_attr = 0x8E;
	g->offset_mid = (uint16_t)(a >> 16);
	g->offset_hi = (uint32_t)(a >> 32);
	g->reserved = 0;
}

int main(int argc, char **argv)
{
	uint64_t n = argc > 1 ? hvft_atou(argv[1]) : 100000;
	uint32_t h = argc > 2 ? (uint32_t)hvft_atou(argv[2]) : 200;
	uint32_t period = argc > 3 ? (uint32_t)hvft_atou(argv[3]) : 50;
	uint32_t acc, want;
	int ok;

	if (period == 0)
		period = 50;
	hvft_cli();
	set_gate(HVFT_IRQ_VECTOR(HVFT_IRQ_TIMER), irq0_entry);
	hvft_timer_set_period_us(period);
	hvft_irq_unmask(HVFT_IRQ_TIMER);

	acc = sti_windows(n);           /* returns with IF = 0 */
	for (uint32_t i = 0; i < h; i++)
		sti_hlt();              /* returns with IF = 0 */

	hvft_irq_mask(HVFT_IRQ_TIMER);
	hvft_timer_set_period_us(0);
	want = model(n);

	hvft_printf("stishadow: iters=%lu windows=%lu taken=%u violations=%u hlt=%u woke=%u hltviol=%u stray=%u ifclear=%u ticks=%u acc=0x%08x\n",
		    n, 4 * n, taken, violations, h, woke, hltviol, stray, ifclear, ticks, acc);
	ok = violations == 0 && hltviol == 0 && stray == 0 && ifclear == 0 && woke >= h;
	if (acc != want) {
		hvft_printf("stishadow: acc 0x%08x want 0x%08x\n", acc, want);
		ok = 0;
	}
	hvft_puts(ok ? "stishadow ok\n" : "stishadow FAILED\n");
	return ok ? 0 : 1;
}
