/*
 * faults: installs handlers for #DE (0) and #UD (6), triggers a divide by
 * zero ("div %rcx" with RCX = 0, encoding 48 f7 f1 = 3 bytes) and an invalid
 * opcode ("ud2" = 0f 0b, 2 bytes). Each handler prints
 *   faults: #DE at rip=<hex16>      /  faults: #UD at rip=<hex16>
 * and advances the saved RIP past the instruction. main prints the address
 * of each instruction (taken with lea) after it resumes:
 *   faults: div instruction at <hex16>   /  faults: ud2 instruction at <hex16>
 * Then it prints
 *   faults: de=1 ud=1
 *   faults ok
 * and powers off with 0 (1 if a handler did not run exactly once or the
 * faulting RIP in the frame was not the instruction's address: prints
 * "faults FAILED").
 */
#include "hvft.h"

#define DIV_LEN 3   /* 48 f7 f1: div %rcx */
#define UD2_LEN 2   /* 0f 0b */

static volatile int de_count, ud_count;
static volatile uint64_t div_rip, ud_rip;          /* from the asm (lea) */
static volatile uint64_t de_fault_rip, ud_fault_rip; /* from the frames */

static void on_de(struct hvft_frame *f)
{
	hvft_printf("faults: #DE at rip=%016lx\n", f->rip);
	de_count++;
	de_fault_rip = f->rip;
	f->rip += DIV_LEN;
}

static void on_ud(struct hvft_frame *f)
{
	hvft_printf("faults: #UD at rip=%016lx\n", f->rip);
	ud_count++;
	ud_fault_rip = f->rip;
	f->rip += UD2_LEN;
}

int main(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	uint64_t rax = 1234, rdx = 0, rcx = 0, at;

	hvft_set_exception_handler(HVFT_EXC_DE, on_de);
	hvft_set_exception_handler(HVFT_EXC_UD, on_ud);

	/* The divide: the encoding is pinned with .byte so its length is
	 * exactly DIV_LEN whatever registers the compiler picks elsewhere. */
	__asm__ volatile(
		"leaq 1f(%%rip), %3\n\t"
		"1: .byte 0x48, 0xf7, 0xf1\n\t"   /* div %rcx */
		: "+a"(rax), "+d"(rdx), "+c"(rcx), "=r"(at)
		:
		: "memory", "cc");
	div_rip = at;
	hvft_printf("faults: div instruction at %016lx\n", div_rip);

	__asm__ volatile(
		"leaq 1f(%%rip), %0\n\t"
		"1: ud2\n\t"
		: "=r"(at)
		:
		: "memory");
	ud_rip = at;
	hvft_printf("faults: ud2 instruction at %016lx\n", ud_rip);

	hvft_printf("faults: de=%d ud=%d\n", de_count, ud_count);
	if (de_count != 1 || ud_count != 1 ||
	    de_fault_rip != div_rip || ud_fault_rip != ud_rip) {
		hvft_puts("faults FAILED\n");
		return 1;
	}
	hvft_puts("faults ok\n");
	return 0;
}
