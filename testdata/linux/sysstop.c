/*
 * sysstop: a system call followed, in the same basic block, by an
 * increment and then a load, a store or a ret. Under hvft's adaptive
 * clock a quiet epoch ends at every 4096th system call, inside such a
 * block; no instruction may run twice. Prints, per case, the number of
 * increments and of memory operations after N calls (both must be N).
 */
#include <stdio.h>
#include <stdlib.h>

static volatile long cell = 1;
static volatile long stored;

static long run_load(long n)
{
	long inc = 0, mem = 0;
	__asm__ volatile(
		"1:\n\t"
		"movl $39, %%eax\n\t" /* getpid */
		"syscall\n\t"
		"incq %0\n\t"
		"addq %4, %1\n\t"
		"decq %2\n\t"
		"jnz 1b\n\t"
		: "+r"(inc), "+r"(mem), "+r"(n)
		: "r"(n), "m"(cell)
		: "rax", "rcx", "r11", "memory");
	return inc == mem ? inc : -1;
}

static long run_store(long n)
{
	long inc = 0;
	stored = 0;
	__asm__ volatile(
		"1:\n\t"
		"movl $39, %%eax\n\t"
		"syscall\n\t"
		"incq %0\n\t"
		"incq %2\n\t"
		"decq %1\n\t"
		"jnz 1b\n\t"
		: "+r"(inc), "+r"(n), "+m"(stored)
		:
		: "rax", "rcx", "r11", "memory");
	return inc == stored ? inc : -1;
}

static long run_ret(long n)
{
	long inc = 0, rets = 0;
	__asm__ volatile(
		"jmp 3f\n"
		"2:\n\t"
		"movl $39, %%eax\n\t"
		"syscall\n\t"
		"incq %0\n\t"
		"ret\n"
		"3:\n\t"
		"call 2b\n\t"
		"incq %1\n\t"
		"decq %2\n\t"
		"jnz 3b\n\t"
		: "+r"(inc), "+r"(rets), "+r"(n)
		:
		: "rax", "rcx", "r11", "memory");
	return inc == rets ? inc : -1;
}

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 20000;
	printf("sysstop: load %ld\n", run_load(n));
	printf("sysstop: store %ld\n", run_store(n));
	printf("sysstop: ret %ld\n", run_ret(n));
	return 0;
}
