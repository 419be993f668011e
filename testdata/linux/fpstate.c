// fpstate: prints the x87 and SSE control and status registers as main
// finds them, first thing, for comparison with a native run
// (cmd/hvft/fpu_test.go). The x87 instruction and data pointers and
// MXCSR_MASK are left out: they depend on the CPU, not on the process.
#include <stdint.h>
#include <stdio.h>
#include <string.h>

struct fpenv {
	uint16_t fcw, pad0, fsw, pad1, ftw, pad2;
	uint32_t fip, fcs_fop, fdp, fds;
};

int main(void) {
	uint16_t fcw, fsw;
	uint32_t mxcsr;
	struct fpenv env;
	static unsigned char fx[512] __attribute__((aligned(16)));
	__asm__ volatile("fnstcw %0" : "=m"(fcw));
	__asm__ volatile("fnstsw %0" : "=m"(fsw));
	__asm__ volatile("stmxcsr %0" : "=m"(mxcsr));
	__asm__ volatile("fxsave %0" : "=m"(fx));
	// FNSTENV masks every x87 exception; FLDENV puts back what it saved.
	__asm__ volatile("fnstenv %0\n\tfldenv %0" : "+m"(env));
	uint16_t fxfcw, fxfsw;
	uint32_t fxmxcsr;
	memcpy(&fxfcw, fx, 2);
	memcpy(&fxfsw, fx + 2, 2);
	memcpy(&fxmxcsr, fx + 24, 4);
	printf("fnstcw %04x\nfnstsw %04x\nstmxcsr %08x\n", fcw, fsw, mxcsr);
	printf("fnstenv fcw %04x fsw %04x ftw %04x\n", env.fcw, env.fsw, env.ftw);
	printf("fxsave fcw %04x fsw %04x ftw %02x mxcsr %08x\n", fxfcw, fxfsw, fx[4], fxmxcsr);
	return 0;
}
