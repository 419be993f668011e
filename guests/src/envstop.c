/*
 * envstop: an environment instruction (OUT, IN, CPUID) followed in the
 * same translation block by a load, a store, a ret, or a jump to a block
 * that a stray 0xF4 byte precedes. Under the adaptive epoch clock a quiet
 * epoch ends at its 4096th environment instruction, inside such a block:
 * the machine must stop there without running any instruction twice, and
 * must not take the stray byte for a HLT that ran.
 *
 *   args: argv[1] = N, iterations per case (default 20000: several quiet
 *                   epoch ends inside every case)
 *
 * Each case counts, in registers, the instructions after the environment
 * instruction (inc) and the memory operations (load, store, ret): both
 * must equal N. Output, one line per case, then a verdict:
 *   envstop: <kind>/<follower> inc=<n> mem=<n>
 *   envstop ok                 -> power off 0
 *   envstop FAILED             -> power off 1
 */
#include "hvft.h"

struct counts {
	uint64_t inc, mem;
};

/* Every case: rdi = N, rsi = &counts. r8 counts increments, r9 memory
 * operations; cell holds 1. */
__asm__(
	".data\n"
	".balign 64\n"
	"envstop_cell: .quad 1\n"
	"envstop_store: .quad 0\n"
	".text\n"

	/* OUT to the disk's sector latch: board state only */
#define ENV_OUT "movl $0x600, %edx\n\tmovl %edi, %eax\n\toutl %eax, (%dx)\n\t"
	/* IN from the board id port */
#define ENV_IN "movl $0x560, %edx\n\tinl (%dx), %eax\n\t"
	/* CPUID leaf 0 */
#define ENV_CPUID "xorl %eax, %eax\n\txorl %ecx, %ecx\n\tcpuid\n\t"

#define CASE_LOAD(name, env)                                   \
	".globl " name "\n" name ":\n\t"                       \
	"pushq %rbx\n\txorl %r8d, %r8d\n\txorl %r9d, %r9d\n"  \
	"1:\n\t" env                                           \
	"incq %r8\n\t"                                         \
	"addq envstop_cell(%rip), %r9\n\t"                     \
	"decq %rdi\n\tjnz 1b\n\t"                              \
	"movq %r8, (%rsi)\n\tmovq %r9, 8(%rsi)\n\tpopq %rbx\n\tret\n"

#define CASE_STORE(name, env)                                  \
	".globl " name "\n" name ":\n\t"                       \
	"pushq %rbx\n\txorl %r8d, %r8d\n\t"                    \
	"movq $0, envstop_store(%rip)\n"                       \
	"1:\n\t" env                                           \
	"incq %r8\n\t"                                         \
	"incq envstop_store(%rip)\n\t"                         \
	"decq %rdi\n\tjnz 1b\n\t"                              \
	"movq envstop_store(%rip), %r9\n\t"                    \
	"movq %r8, (%rsi)\n\tmovq %r9, 8(%rsi)\n\tpopq %rbx\n\tret\n"

#define CASE_RET(name, env)                                    \
	".globl " name "\n" name ":\n\t"                       \
	"pushq %rbx\n\txorl %r8d, %r8d\n\txorl %r9d, %r9d\n"  \
	"1:\n\tcall 2f\n\t"                                    \
	"incq %r9\n\t"                                         \
	"decq %rdi\n\tjnz 1b\n\t"                              \
	"movq %r8, (%rsi)\n\tmovq %r9, 8(%rsi)\n\tpopq %rbx\n\tret\n" \
	"2:\n\t" env "incq %r8\n\tret\n"

	/* the block after the jump starts right after a 0xF4 byte */
#define CASE_HLTBYTE(name, env)                                \
	".globl " name "\n" name ":\n\t"                       \
	"pushq %rbx\n\txorl %r8d, %r8d\n\txorl %r9d, %r9d\n"  \
	"1:\n\t" env                                           \
	"incq %r8\n\t"                                         \
	"jmp 2f\n\t"                                           \
	".byte 0xf4\n"                                         \
	"2:\n\tincq %r9\n\t"                                   \
	"decq %rdi\n\tjnz 1b\n\t"                              \
	"movq %r8, (%rsi)\n\tmovq %r9, 8(%rsi)\n\tpopq %rbx\n\tret\n"

	CASE_LOAD("envstop_out_load", ENV_OUT)
	CASE_STORE("envstop_out_store", ENV_OUT)
	CASE_RET("envstop_out_ret", ENV_OUT)
	CASE_HLTBYTE("envstop_out_hltbyte", ENV_OUT)
	CASE_LOAD("envstop_in_load", ENV_IN)
	CASE_STORE("envstop_in_store", ENV_IN)
	CASE_RET("envstop_in_ret", ENV_IN)
	CASE_HLTBYTE("envstop_in_hltbyte", ENV_IN)
	CASE_LOAD("envstop_cpuid_load", ENV_CPUID)
	CASE_STORE("envstop_cpuid_store", ENV_CPUID)
	CASE_RET("envstop_cpuid_ret", ENV_CPUID)
	CASE_HLTBYTE("envstop_cpuid_hltbyte", ENV_CPUID)
);

typedef void (*case_fn)(uint64_t n, struct counts *c);

#define DECL(k, f) void envstop_##k##_##f(uint64_t n, struct counts *c);
DECL(out, load) DECL(out, store) DECL(out, ret) DECL(out, hltbyte)
DECL(in, load) DECL(in, store) DECL(in, ret) DECL(in, hltbyte)
DECL(cpuid, load) DECL(cpuid, store) DECL(cpuid, ret) DECL(cpuid, hltbyte)

static const struct {
	const char *name;
	case_fn fn;
} cases[] = {
	{"out/load", envstop_out_load}, {"out/store", envstop_out_store},
	{"out/ret", envstop_out_ret}, {"out/hltbyte", envstop_out_hltbyte},
	{"in/load", envstop_in_load}, {"in/store", envstop_in_store},
	{"in/ret", envstop_in_ret}, {"in/hltbyte", envstop_in_hltbyte},
	{"cpuid/load", envstop_cpuid_load}, {"cpuid/store", envstop_cpuid_store},
	{"cpuid/ret", envstop_cpuid_ret}, {"cpuid/hltbyte", envstop_cpuid_hltbyte},
};

int main(int argc, char **argv)
{
	uint64_t n = argc > 1 ? hvft_atou(argv[1]) : 20000;
	int bad = 0;

	if (n == 0)
		n = 1;
	for (unsigned i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct counts c = {0, 0};
		cases[i].fn(n, &c);
		hvft_printf("envstop: %s inc=%u mem=%u\n", cases[i].name, (unsigned)c.inc, (unsigned)c.mem);
		if (c.inc != n || c.mem != n)
			bad++;
	}
	hvft_puts(bad ? "envstop FAILED\n" : "envstop ok\n");
	return bad ? 1 : 0;
}
