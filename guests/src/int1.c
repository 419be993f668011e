/*
 * int1: executes INT1 (ICEBP, the single byte f1) N times (argument 1,
 * default 3) with handlers for #DB (1) and #UD (6). On x86-64 INT1 raises
 * #DB as a trap: the saved RIP is the address after the f1 byte, and no
 * error code is pushed (a pushed one would shift the frame the SDK's stub
 * reads, so RIP, CS and RSP would all come out wrong). After each INT1
 * main prints
 *   int1: vector=<v> rip=insn+<d> cs=0x<hex> rsp=<same|moved>
 * where d is the saved RIP minus the address of the f1 byte (taken with
 * lea) and rsp says whether the saved RSP is the one the f1 ran with. The
 * #UD handler moves the saved RIP past the byte, so that a machine that
 * raises #UD for INT1 comes back to say so instead of looping. Then
 *   int1: db=<n> ud=<n>
 *   int1 ok       -> power off 0 (every INT1 was one #DB at insn+1, CS 0x08,
 *                    RSP as it was)
 *   int1 FAILED   -> power off 1
 */
#include "hvft.h"

#define INT1_LEN 1  /* f1 */

static volatile int db_count, ud_count;
static volatile uint64_t got_vector, got_rip, got_cs, got_rsp;

static void record(struct hvft_frame *f)
{
	got_vector = f->vector;
	got_rip = f->rip;
	got_cs = f->cs;
	got_rsp = f->rsp;
}

static void on_db(struct hvft_frame *f)
{
	db_count++;
	record(f);
}

static void on_ud(struct hvft_frame *f)
{
	ud_count++;
	record(f);
	f->rip += INT1_LEN;
}

int main(int argc, char **argv)
{
	unsigned n = argc > 1 ? hvft_atou(argv[1]) : 3;
	int bad = 0;

	hvft_set_exception_handler(HVFT_EXC_DB, on_db);
	hvft_set_exception_handler(HVFT_EXC_UD, on_ud);

	for (unsigned i = 0; i < n; i++) {
		uint64_t at, sp;

		got_vector = 0xff;
		/* The byte is pinned with .byte: assemblers disagree on the
		 * mnemonic (icebp, int1) and some refuse both. */
		__asm__ volatile(
			"leaq 1f(%%rip), %0\n\t"
			"movq %%rsp, %1\n\t"
			"1: .byte 0xf1\n\t"
			: "=&r"(at), "=&r"(sp)
			:
			: "memory");
		int64_t d = (int64_t)(got_rip - at);
		hvft_printf("int1: vector=%lu rip=insn%c%ld cs=0x%lx rsp=%s\n",
			    got_vector, d < 0 ? '-' : '+', d < 0 ? -d : d,
			    got_cs, got_rsp == sp ? "same" : "moved");
		if (got_vector != HVFT_EXC_DB || d != INT1_LEN || got_cs != 0x08 || got_rsp != sp)
			bad++;
	}

	hvft_printf("int1: db=%d ud=%d\n", db_count, ud_count);
	if (bad || db_count != (int)n || ud_count != 0) {
		hvft_puts("int1 FAILED\n");
		return 1;
	}
	hvft_puts("int1 ok\n");
	return 0;
}
