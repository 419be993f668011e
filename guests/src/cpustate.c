/*
 * cpustate: CPU state beyond the general registers that a snapshot (or a
 * backup that joins mid-run) must carry: MSRs, the swapgs pair, debug
 * registers, x87 and SSE state. Every iteration reads everything back,
 * checks it against what the previous iteration wrote, folds it into a
 * running checksum and writes new values derived from the checksum. A
 * replica restored without one of these registers reads something else:
 * its checksum (and its "bad" count) differ from the primary's.
 *
 *   args: loop mode (default):  argv[1] = N iterations (default 600000)
 *                               argv[2] = K, print every K iterations (default N/10)
 *         ticks mode:           argv[1] = "ticks"
 *                               argv[2] = N iterations (default 1000)
 *                               argv[3] = P, timer period in us (default 1000)
 *                               argv[4] = K (default 100)
 *   In ticks mode each iteration first waits for a timer IRQ
 *   ("cli; check; sti; hlt"), so the machine halts between iterations
 *   (epoch boundaries while the state is live, where a backup can join).
 *
 * State (x = a value derived from the checksum, masked to be valid):
 *   MSRs  TSC_AUX c0000103 (32 bits), STAR c0000081 (64), LSTAR c0000082,
 *         CSTAR c0000083 (canonical), SFMASK c0000084 (32 bits),
 *         SYSENTER_CS 174 (16 bits, RPL 0), SYSENTER_ESP 175,
 *         SYSENTER_EIP 176, KERNEL_GS_BASE c0000102 (canonical),
 *         FS_BASE c0000100, GS_BASE c0000101: both point into an 8 KiB
 *         table in .bss, and the words at %fs:0 and %gs:0 are read too.
 *         GS_BASE and KERNEL_GS_BASE are written, then swapgs exchanges
 *         them; reading does swapgs twice (checking the exchange).
 *   DRs   DR0-DR3 (canonical addresses), DR6 (0xffff0ff0 | B0-B3),
 *         DR7 = 0x400 | LE/GE bits: no breakpoint is ever enabled.
 *   x87   FCW (all exceptions masked, precision 53/64 bits, any rounding);
 *         four live stack registers: each iteration pushes a new exact
 *         value and drops the bottom one ("fildll x; fstp %st(4);
 *         fxch %st(1); fxch %st(2); fxch %st(3)": [s0 s1 s2 s3] ->
 *         [x s0 s1 s2]), read with fxsave (ST0-3, abridged tag word) and
 *         fnstsw (TOP, C1, exception bits).
 *   SSE   MXCSR (exceptions masked, any rounding, FZ), XMM0-XMM15
 *         (movdqu); CR4.OSFXSR|OSXMMEXCPT are set at start.
 * Left out: CR8 (the TPR). Unicorn accepts "mov %rax, %cr8" but always
 * reads 0 back (it has no APIC), so its value cannot be checked.
 *
 * Output:
 *   cpustate: iter=<i> sum=0x<16 hex>               every K iterations
 *   cpustate: iters=<N> bad=<n> sum=0x<16 hex>      at the end
 *   cpustate ok  (-> power off 0)  or  cpustate FAILED  (-> 1)
 * The first few mismatches are printed as
 *   cpustate: iter=<i> <register> got=0x<hex> want=0x<hex>
 * sum depends only on N (and the mode's iteration count), not on timing.
 */
#include "hvft.h"

#define MAX_REPORTS 8
#define CANON(x) ((x) & 0x00007ffffffffff8ULL)

enum {
	R_TSC_AUX, R_STAR, R_LSTAR, R_CSTAR, R_SFMASK, R_SYSENTER_CS,
	R_SYSENTER_ESP, R_SYSENTER_EIP, R_KGS, R_FS, R_GS,
	R_GS_SWAPPED, R_KGS_SWAPPED, R_FS_WORD, R_GS_WORD,
	R_DR0, R_DR1, R_DR2, R_DR3, R_DR6, R_DR7,
	R_FCW, R_FSW, R_FTW, R_ST0L, R_ST0H, R_ST1L, R_ST1H, R_ST2L, R_ST2H, R_ST3L, R_ST3H,
	R_MXCSR,
	R_XMM0,                 /* 32 words: XMM0-15, low then high */
	R_COUNT = R_XMM0 + 32
};

static const char *const names[R_XMM0] = {
	"TSC_AUX", "STAR", "LSTAR", "CSTAR", "SFMASK", "SYSENTER_CS",
	"SYSENTER_ESP", "SYSENTER_EIP", "KERNEL_GS_BASE", "FS_BASE", "GS_BASE",
	"GS_BASE(swapped)", "KERNEL_GS_BASE(swapped)", "%fs:0", "%gs:0",
	"DR0", "DR1", "DR2", "DR3", "DR6", "DR7",
	"FCW", "FSW", "FTW", "ST0.lo", "ST0.hi", "ST1.lo", "ST1.hi", "ST2.lo", "ST2.hi", "ST3.lo", "ST3.hi",
	"MXCSR",
};

#define TABLE_WORDS 1024
static uint64_t table[TABLE_WORDS] __attribute__((aligned(4096)));
static uint8_t fx[512] __attribute__((aligned(16)));
static uint64_t xmm[32] __attribute__((aligned(16)));
static uint64_t got[R_COUNT], want[R_COUNT];
static uint32_t bad, reports;
static uint64_t sum = 0x6a09e667f3bcc908ULL;

static uint64_t mix64(uint64_t z)
{
	z += 0x9E3779B97F4A7C15ULL;
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
	return z ^ (z >> 31);
}

static inline uint64_t rdmsr(uint32_t msr)
{
	uint32_t lo, hi;
	__asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr) : "memory");
	return ((uint64_t)hi << 32) | lo;
}

static inline void wrmsr(uint32_t msr, uint64_t v)
{
	__asm__ volatile("wrmsr" : : "c"(msr), "a"((uint32_t)v), "d"((uint32_t)(v >> 32)) : "memory");
}

static inline void swapgs(void)
{
	__asm__ volatile("swapgs" ::: "memory");
}

#define MSR_TSC_AUX        0xC0000103u
#define MSR_STAR           0xC0000081u
#define MSR_LSTAR          0xC0000082u
#define MSR_CSTAR          0xC0000083u
#define MSR_SFMASK         0xC0000084u
#define MSR_SYSENTER_CS    0x174u
#define MSR_SYSENTER_ESP   0x175u
#define MSR_SYSENTER_EIP   0x176u
#define MSR_FS_BASE        0xC0000100u
#define MSR_GS_BASE        0xC0000101u
#define MSR_KERNEL_GS_BASE 0xC0000102u

#define GET_DR(n, dst) __asm__ volatile("mov %%db" #n ", %0" : "=r"(dst) : : "memory")
#define SET_DR(n, v)   __asm__ volatile("mov %0, %%db" #n : : "r"((uint64_t)(v)) : "memory")

/* 80-bit extended value of a positive integer (what fildll loads, exactly) */
static void ext80(uint64_t v, uint64_t *lo, uint64_t *hi)
{
	int msb = 63 - __builtin_clzll(v);
	*lo = v << (63 - msb);
	*hi = (uint64_t)(16383 + msb);
}

static void read_all(void)
{
	uint64_t g, k, v;
	uint16_t fcw, fsw;
	uint32_t mx;

	got[R_TSC_AUX] = rdmsr(MSR_TSC_AUX);
	got[R_STAR] = rdmsr(MSR_STAR);
	got[R_LSTAR] = rdmsr(MSR_LSTAR);
	got[R_CSTAR] = rdmsr(MSR_CSTAR);
	got[R_SFMASK] = rdmsr(MSR_SFMASK);
	got[R_SYSENTER_CS] = rdmsr(MSR_SYSENTER_CS);
	got[R_SYSENTER_ESP] = rdmsr(MSR_SYSENTER_ESP);
	got[R_SYSENTER_EIP] = rdmsr(MSR_SYSENTER_EIP);
	got[R_KGS] = k = rdmsr(MSR_KERNEL_GS_BASE);
	got[R_FS] = rdmsr(MSR_FS_BASE);
	got[R_GS] = g = rdmsr(MSR_GS_BASE);
	__asm__ volatile("movq %%fs:0, %0" : "=r"(v) : : "memory");
	got[R_FS_WORD] = v;
	__asm__ volatile("movq %%gs:0, %0" : "=r"(v) : : "memory");
	got[R_GS_WORD] = v;
	swapgs();
	got[R_GS_SWAPPED] = rdmsr(MSR_GS_BASE);
	got[R_KGS_SWAPPED] = rdmsr(MSR_KERNEL_GS_BASE);
	swapgs();
	(void)g;
	(void)k;

	GET_DR(0, got[R_DR0]);
	GET_DR(1, got[R_DR1]);
	GET_DR(2, got[R_DR2]);
	GET_DR(3, got[R_DR3]);
	GET_DR(6, got[R_DR6]);
	GET_DR(7, got[R_DR7]);

	__asm__ volatile("fnstcw %0" : "=m"(fcw));
	__asm__ volatile("fnstsw %0" : "=m"(fsw));
	__asm__ volatile("stmxcsr %0" : "=m"(mx));
	__asm__ volatile("fxsave %0" : "=m"(fx) : : "memory");
	got[R_FCW] = fcw;
	got[R_FSW] = fsw & 0x3a3fu;     /* TOP, C1, exception flags (C0/C2/C3 are undefined after fild) */
	got[R_FTW] = fx[4];
	for (int i = 0; i < 4; i++) {
		uint64_t lo, hi = 0;
		memcpy(&lo, fx + 32 + 16 * i, 8);
		memcpy(&hi, fx + 40 + 16 * i, 2);
		got[R_ST0L + 2 * i] = lo;
		got[R_ST0H + 2 * i] = hi;
	}
	got[R_MXCSR] = mx;

	__asm__ volatile(
		"movdqu %%xmm0, 0(%0)\n\t"
		"movdqu %%xmm1, 16(%0)\n\t"
		"movdqu %%xmm2, 32(%0)\n\t"
		"movdqu %%xmm3, 48(%0)\n\t"
		"movdqu %%xmm4, 64(%0)\n\t"
		"movdqu %%xmm5, 80(%0)\n\t"
		"movdqu %%xmm6, 96(%0)\n\t"
		"movdqu %%xmm7, 112(%0)\n\t"
		"movdqu %%xmm8, 128(%0)\n\t"
		"movdqu %%xmm9, 144(%0)\n\t"
		"movdqu %%xmm10, 160(%0)\n\t"
		"movdqu %%xmm11, 176(%0)\n\t"
		"movdqu %%xmm12, 192(%0)\n\t"
		"movdqu %%xmm13, 208(%0)\n\t"
		"movdqu %%xmm14, 224(%0)\n\t"
		"movdqu %%xmm15, 240(%0)\n\t"
		: : "r"(xmm) : "memory");
	for (int i = 0; i < 32; i++)
		got[R_XMM0 + i] = xmm[i];
}

/* derives new values from the checksum, writes them, records want[] */
static void write_all(uint64_t seed, int ticks_mode)
{
	uint64_t x[24];
	uint64_t fsb, gsb, kgsb, v;
	uint16_t fcw;
	uint32_t mx;

	for (int i = 0; i < 24; i++)
		x[i] = mix64(seed + (uint64_t)i);
	(void)ticks_mode;

	want[R_TSC_AUX] = x[0] & 0xffffffffu;
	want[R_STAR] = x[1];
	want[R_LSTAR] = CANON(x[2]);
	want[R_CSTAR] = CANON(x[3]);
	want[R_SFMASK] = x[4] & 0xffffffffu;
	want[R_SYSENTER_CS] = x[5] & 0xfff8u;
	want[R_SYSENTER_ESP] = CANON(x[6]);
	want[R_SYSENTER_EIP] = CANON(x[7]);
	wrmsr(MSR_TSC_AUX, want[R_TSC_AUX]);
	wrmsr(MSR_STAR, want[R_STAR]);
	wrmsr(MSR_LSTAR, want[R_LSTAR]);
	wrmsr(MSR_CSTAR, want[R_CSTAR]);
	wrmsr(MSR_SFMASK, want[R_SFMASK]);
	wrmsr(MSR_SYSENTER_CS, want[R_SYSENTER_CS]);
	wrmsr(MSR_SYSENTER_ESP, want[R_SYSENTER_ESP]);
	wrmsr(MSR_SYSENTER_EIP, want[R_SYSENTER_EIP]);

	/* FS, GS and KERNEL_GS bases all point at words of the table */
	fsb = (uint64_t)(uintptr_t)&table[x[8] % TABLE_WORDS];
	gsb = (uint64_t)(uintptr_t)&table[x[9] % TABLE_WORDS];
	kgsb = (uint64_t)(uintptr_t)&table[x[10] % TABLE_WORDS];
	wrmsr(MSR_FS_BASE, fsb);
	wrmsr(MSR_GS_BASE, gsb);
	wrmsr(MSR_KERNEL_GS_BASE, kgsb);
	swapgs();                       /* now GS = kgsb, KERNEL_GS = gsb */
	want[R_FS] = fsb;
	want[R_GS] = kgsb;
	want[R_KGS] = gsb;
	want[R_GS_SWAPPED] = gsb;
	want[R_KGS_SWAPPED] = kgsb;
	want[R_FS_WORD] = *(const uint64_t *)(uintptr_t)fsb;
	want[R_GS_WORD] = *(const uint64_t *)(uintptr_t)kgsb;

	want[R_DR0] = CANON(x[11]);
	want[R_DR1] = CANON(x[12]);
	want[R_DR2] = CANON(x[13]);
	want[R_DR3] = CANON(x[14]);
	want[R_DR6] = 0xffff0ff0u | (x[15] & 0xf);
	want[R_DR7] = 0x400u | (x[15] & 0x300);   /* LE/GE only: nothing enabled */
	SET_DR(0, want[R_DR0]);
	SET_DR(1, want[R_DR1]);
	SET_DR(2, want[R_DR2]);
	SET_DR(3, want[R_DR3]);
	SET_DR(6, want[R_DR6]);
	SET_DR(7, want[R_DR7]);

	/* x87: masked exceptions, precision 53 or 64 bits, any rounding */
	fcw = (uint16_t)(0x007f | ((2 + (x[16] & 1)) << 8) | (((x[16] >> 1) & 3) << 10));
	__asm__ volatile("fldcw %0" : : "m"(fcw));
	want[R_FCW] = fcw;
	/* push a new exact integer, drop the bottom one:
	 * [s0 s1 s2 s3] -fildll-> [n s0 s1 s2 s3] -fstp st(4)-> [s0 s1 s2 n]
	 * -fxch st(1), st(2), st(3)-> [n s0 s1 s2] */
	v = (x[17] & 0x3fffffffffffffffULL) | 1;
	__asm__ volatile("fildll %0\n\t"
			 "fstp %%st(4)\n\t"
			 "fxch %%st(1)\n\t"
			 "fxch %%st(2)\n\t"
			 "fxch %%st(3)"
			 : : "m"(v) : "memory");
	for (int i = 3; i > 0; i--) {
		want[R_ST0L + 2 * i] = got[R_ST0L + 2 * (i - 1)];
		want[R_ST0H + 2 * i] = got[R_ST0H + 2 * (i - 1)];
	}
	ext80(v, &want[R_ST0L], &want[R_ST0H]);
	want[R_FSW] = 4u << 11;         /* TOP = 4, nothing else */
	want[R_FTW] = 0xf0;             /* physical registers 4..7 valid */

	/* SSE: masked exceptions, any rounding, FZ either way */
	mx = 0x1f80u | (uint32_t)((x[18] & 3) << 13) | (uint32_t)((x[18] & 4) << 13);
	__asm__ volatile("ldmxcsr %0" : : "m"(mx));
	want[R_MXCSR] = mx;
	for (int i = 0; i < 32; i++)
		xmm[i] = mix64(x[19] + (uint64_t)i * 0x100);
	__asm__ volatile(
		"movdqu 0(%0), %%xmm0\n\t"
		"movdqu 16(%0), %%xmm1\n\t"
		"movdqu 32(%0), %%xmm2\n\t"
		"movdqu 48(%0), %%xmm3\n\t"
		"movdqu 64(%0), %%xmm4\n\t"
		"movdqu 80(%0), %%xmm5\n\t"
		"movdqu 96(%0), %%xmm6\n\t"
		"movdqu 112(%0), %%xmm7\n\t"
		"movdqu 128(%0), %%xmm8\n\t"
		"movdqu 144(%0), %%xmm9\n\t"
		"movdqu 160(%0), %%xmm10\n\t"
		"movdqu 176(%0), %%xmm11\n\t"
		"movdqu 192(%0), %%xmm12\n\t"
		"movdqu 208(%0), %%xmm13\n\t"
		"movdqu 224(%0), %%xmm14\n\t"
		"movdqu 240(%0), %%xmm15\n\t"
		: : "r"(xmm) : "memory");
	for (int i = 0; i < 32; i++)
		want[R_XMM0 + i] = xmm[i];
}

static void check_and_fold(uint32_t iter)
{
	for (int i = 0; i < R_COUNT; i++) {
		sum = mix64(sum ^ got[i]);
		if (got[i] != want[i]) {
			bad++;
			if (reports++ < MAX_REPORTS) {
				if (i < R_XMM0)
					hvft_printf("cpustate: iter=%u %s got=0x%lx want=0x%lx\n",
						    iter, names[i], got[i], want[i]);
				else
					hvft_printf("cpustate: iter=%u XMM%d.%s got=0x%lx want=0x%lx\n",
						    iter, (i - R_XMM0) / 2, (i - R_XMM0) % 2 ? "hi" : "lo",
						    got[i], want[i]);
			}
		}
	}
}

static volatile uint32_t ticks;

static void on_timer(int irq)
{
	(void)irq;
	ticks++;
}

static void setup(void)
{
	uint64_t cr4;
	uint64_t v[4];
	uint16_t fcw = 0x0f7f;          /* round toward zero, 64-bit precision, masked */
	uint32_t mx = 0x7f80;           /* round toward zero, masked */

	/* SSE needs CR4.OSFXSR (and OSXMMEXCPT for unmasked exceptions; all
	 * are masked here); the board leaves CR0.EM = 0 */
	__asm__ volatile("mov %%cr4, %0" : "=r"(cr4));
	cr4 |= 0x600;
	__asm__ volatile("mov %0, %%cr4" : : "r"(cr4) : "memory");

	for (int i = 0; i < TABLE_WORDS; i++)
		table[i] = mix64(0x7461626c65ULL + (uint64_t)i);

	/* x87: four live registers */
	for (int i = 0; i < 4; i++)
		v[i] = (mix64(0x783837ULL + (uint64_t)i) & 0x3fffffffffffffffULL) | 1;
	__asm__ volatile("fninit\n\t"
			 "fldcw %0\n\t"
			 "fildll %4\n\t"
			 "fildll %3\n\t"
			 "fildll %2\n\t"
			 "fildll %1\n\t"
			 : : "m"(fcw), "m"(v[0]), "m"(v[1]), "m"(v[2]), "m"(v[3]) : "memory");
	__asm__ volatile("ldmxcsr %0" : : "m"(mx));
	/* the first read checks what setup left: fill got[] with it */
	read_all();
	for (int i = 0; i < R_COUNT; i++)
		want[i] = got[i];
	/* ST0..3 must be v[0..3] exactly */
	for (int i = 0; i < 4; i++) {
		uint64_t lo, hi;
		ext80(v[i], &lo, &hi);
		if (got[R_ST0L + 2 * i] != lo || got[R_ST0H + 2 * i] != hi) {
			hvft_printf("cpustate: setup ST%d got=0x%lx:%lx want=0x%lx:%lx\n", i,
				    got[R_ST0H + 2 * i], got[R_ST0L + 2 * i], hi, lo);
			bad++;
		}
	}
	if (got[R_FCW] != fcw || got[R_MXCSR] != mx) {
		hvft_printf("cpustate: setup FCW=0x%lx MXCSR=0x%lx\n", got[R_FCW], got[R_MXCSR]);
		bad++;
	}
	write_all(sum, 0);
}

int main(int argc, char **argv)
{
	int ticks_mode = argc > 1 && hvft_strcmp(argv[1], "ticks") == 0;
	int a = ticks_mode ? 2 : 1;
	uint32_t n = argc > a ? (uint32_t)hvft_atou(argv[a]) : (ticks_mode ? 1000 : 600000);
	uint32_t period = ticks_mode && argc > 3 ? (uint32_t)hvft_atou(argv[3]) : 1000;
	uint32_t k;

	if (ticks_mode)
		k = argc > 4 ? (uint32_t)hvft_atou(argv[4]) : 100;
	else
		k = argc > 2 ? (uint32_t)hvft_atou(argv[2]) : (n / 10 ? n / 10 : 1);
	if (k == 0)
		k = 1;
	if (period == 0)
		period = 1000;

	hvft_cli();
	setup();
	if (ticks_mode) {
		hvft_set_irq_handler(HVFT_IRQ_TIMER, on_timer);
		hvft_timer_set_period_us(period);
		hvft_irq_unmask(HVFT_IRQ_TIMER);
	}

	for (uint32_t i = 1; i <= n; i++) {
		if (ticks_mode) {
			uint32_t seen = ticks;
			for (;;) {
				hvft_cli();
				if (ticks != seen)
					break;
				hvft_wait_for_interrupt();
			}
		}
		read_all();
		check_and_fold(i);
		write_all(sum, ticks_mode);
		if (i % k == 0)
			hvft_printf("cpustate: iter=%u sum=0x%016lx\n", i, sum);
	}

	if (ticks_mode) {
		hvft_irq_mask(HVFT_IRQ_TIMER);
		hvft_timer_set_period_us(0);
	}
	hvft_printf("cpustate: iters=%u bad=%u sum=0x%016lx\n", n, bad, sum);
	hvft_puts(bad ? "cpustate FAILED\n" : "cpustate ok\n");
	return bad ? 1 : 0;
}
