/*
 * hvft.c - guest SDK library for the hvft board.
 */
#include <stdarg.h>
#include "hvft.h"

/* ------------------------------------------------------------------ */
/* memory / string helpers (gcc may emit calls to memcpy & co.)        */
/* ------------------------------------------------------------------ */

void *memcpy(void *dst, const void *src, size_t n)
{
	unsigned char *d = dst;
	const unsigned char *s = src;
	while (n--)
		*d++ = *s++;
	return dst;
}

void *memmove(void *dst, const void *src, size_t n)
{
	unsigned char *d = dst;
	const unsigned char *s = src;
	if (d == s || n == 0)
		return dst;
	if (d < s) {
		while (n--)
			*d++ = *s++;
	} else {
		d += n;
		s += n;
		while (n--)
			*--d = *--s;
	}
	return dst;
}

void *memset(void *dst, int c, size_t n)
{
	unsigned char *d = dst;
	while (n--)
		*d++ = (unsigned char)c;
	return dst;
}

int memcmp(const void *a, const void *b, size_t n)
{
	const unsigned char *x = a, *y = b;
	for (; n; n--, x++, y++)
		if (*x != *y)
			return *x < *y ? -1 : 1;
	return 0;
}

size_t strlen(const char *s)
{
	size_t n = 0;
	while (s[n])
		n++;
	return n;
}

int hvft_strcmp(const char *a, const char *b)
{
	const unsigned char *x = (const unsigned char *)a;
	const unsigned char *y = (const unsigned char *)b;
	while (*x && *x == *y) {
		x++;
		y++;
	}
	return (int)*x - (int)*y;
}

unsigned long hvft_atou(const char *s)
{
	unsigned long v = 0;
	if (!s)
		return 0;
	if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
		for (s += 2;; s++) {
			unsigned d;
			if (*s >= '0' && *s <= '9')
				d = (unsigned)(*s - '0');
			else if (*s >= 'a' && *s <= 'f')
				d = (unsigned)(*s - 'a' + 10);
			else if (*s >= 'A' && *s <= 'F')
				d = (unsigned)(*s - 'A' + 10);
			else
				break;
			v = v * 16 + d;
		}
		return v;
	}
	for (; *s >= '0' && *s <= '9'; s++)
		v = v * 10 + (unsigned long)(*s - '0');
	return v;
}

/* ------------------------------------------------------------------ */
/* devices                                                             */
/* ------------------------------------------------------------------ */

void hvft_putc(char c)
{
	hvft_outb(HVFT_PORT_CONSOLE_TX, (uint8_t)c);
}

void hvft_write(const void *buf, size_t len)
{
	const char *p = buf;
	while (len--)
		hvft_putc(*p++);
}

void hvft_puts(const char *s)
{
	while (*s)
		hvft_putc(*s++);
}

int hvft_console_read(char *buf, int max)
{
	int n = 0;
	while (n < max) {
		uint32_t v = hvft_inl(HVFT_PORT_CONSOLE_RX);
		if (v == HVFT_CONSOLE_RX_EMPTY)
			break;
		buf[n++] = (char)(v & 0xFF);
	}
	return n;
}

uint64_t hvft_clock_ns(void)
{
	uint32_t lo = hvft_inl(HVFT_PORT_CLOCK_LO);
	uint32_t hi = hvft_inl(HVFT_PORT_CLOCK_HI);
	return ((uint64_t)hi << 32) | lo;
}

uint32_t hvft_random32(void)
{
	return hvft_inl(HVFT_PORT_RANDOM);
}

void hvft_timer_set_period_us(uint32_t us)
{
	hvft_outl(HVFT_PORT_TIMER_PERIOD, us);
}

uint32_t hvft_timer_get_period_us(void)
{
	return hvft_inl(HVFT_PORT_TIMER_PERIOD);
}

uint32_t hvft_board_id(void)
{
	return hvft_inl(HVFT_PORT_BOARD_ID);
}

void hvft_irq_unmask(int irq)
{
	uint32_t m = hvft_inl(HVFT_PORT_PIC_MASK);
	hvft_outl(HVFT_PORT_PIC_MASK, m & ~(1u << (irq & 31)));
}

void hvft_irq_mask(int irq)
{
	uint32_t m = hvft_inl(HVFT_PORT_PIC_MASK);
	hvft_outl(HVFT_PORT_PIC_MASK, m | (1u << (irq & 31)));
}

void hvft_eoi(int irq)
{
	hvft_outl(HVFT_PORT_PIC_EOI, (uint32_t)irq);
}

void hvft_poweroff(int code)
{
	hvft_cli();
	hvft_outl(HVFT_PORT_POWER_OFF, (uint32_t)code);
	for (;;)
		__asm__ volatile("cli; hlt" ::: "memory");
}

/* ------------------------------------------------------------------ */
/* block device                                                        */
/* ------------------------------------------------------------------ */

/*
 * One operation at a time; completion raises IRQ 2. The IRQ handler only
 * counts completions; the issuing code waits with IF = 0 for the count to
 * change ("cli; check; sti; hlt"), then reads DISK_STATUS once. Each
 * operation costs two DISK_STATUS reads: one right after the command (to
 * see whether it was refused: the refused bit may be gone by the time the
 * in-flight operation completes) and one after its completion IRQ.
 */
static volatile uint32_t disk_completions;  /* IRQ 2 deliveries */
static int disk_initialized;
static unsigned disk_reissue_count;

static void disk_irq(int irq)
{
	(void)irq;
	disk_completions++;
}

static void disk_init(void)
{
	if (disk_initialized)
		return;
	disk_initialized = 1;
	hvft_set_irq_handler(HVFT_IRQ_DISK, disk_irq);
	hvft_irq_unmask(HVFT_IRQ_DISK);
}

/* With IF = 0 on entry: sleeps until at least one IRQ 2 has been delivered
 * since the count was `seen`. Returns with IF = 0. */
static void disk_wait_completion(uint32_t seen)
{
	for (;;) {
		hvft_cli();
		if (disk_completions != seen)
			return;
		hvft_wait_for_interrupt();   /* sti; hlt */
	}
}

/* One command of 1..128 sectors. Called with IF = 0. */
static int disk_command(uint32_t cmd, uint32_t sector, uint32_t buf, uint32_t count)
{
	for (;;) {
		uint32_t seen, st;

		hvft_cli();
		seen = disk_completions;
		hvft_outl(HVFT_PORT_DISK_SECTOR, sector);
		hvft_outl(HVFT_PORT_DISK_BUFFER, buf);
		hvft_outl(HVFT_PORT_DISK_COUNT, count);
		hvft_outl(HVFT_PORT_DISK_COMMAND, cmd);
		st = hvft_inl(HVFT_PORT_DISK_STATUS);
		if (st & HVFT_DISK_REFUSED) {
			/* someone else's operation is in flight: let it finish,
			 * then issue ours again */
			disk_wait_completion(seen);
			continue;
		}
		/* accepted (an invalid command completes at once, with IRQ 2) */
		for (;;) {
			disk_wait_completion(seen);
			seen = disk_completions;
			st = hvft_inl(HVFT_PORT_DISK_STATUS) & HVFT_DISK_ST_MASK;
			if (st != HVFT_DISK_ST_BUSY)
				break;
			/* still busy: a stray IRQ 2; keep waiting for ours */
		}
		if (st == HVFT_DISK_ST_OK)
			return 0;
		if (st == HVFT_DISK_ST_UNCERTAIN) {
			/* failover while in flight: may or may not have happened;
			 * same command again (writes are idempotent by sector) */
			disk_reissue_count++;
			continue;
		}
		return -1;   /* HVFT_DISK_ST_ERROR or unknown */
	}
}

static int disk_transfer(uint32_t cmd, uint32_t sector, uintptr_t buf, uint32_t count)
{
	uint64_t flags;
	int rc = 0;

	if (count == 0 || buf > 0xFFFFFFFFu ||
	    (uint64_t)buf + (uint64_t)count * HVFT_SECTOR_SIZE > 0x100000000ULL)
		return -1;
	flags = hvft_read_rflags();
	hvft_cli();
	disk_init();
	while (count) {
		uint32_t n = count > HVFT_DISK_MAX_COUNT ? HVFT_DISK_MAX_COUNT : count;
		if (disk_command(cmd, sector, (uint32_t)buf, n) != 0) {
			rc = -1;
			break;
		}
		sector += n;
		buf += (uintptr_t)n * HVFT_SECTOR_SIZE;
		count -= n;
	}
	if (flags & 0x200)   /* IF was set on entry */
		hvft_sti();
	return rc;
}

int hvft_disk_sectors(void)
{
	uint32_t v = hvft_inl(HVFT_PORT_DISK_SECTORS);
	if (v == 0xFFFFFFFFu)
		return -1;   /* no such port: a board without the block device */
	if (v > 0x7FFFFFFFu)
		return 0x7FFFFFFF;
	return (int)v;
}

int hvft_disk_read(uint32_t sector, void *buf, uint32_t count)
{
	return disk_transfer(HVFT_DISK_CMD_READ, sector, (uintptr_t)buf, count);
}

int hvft_disk_write(uint32_t sector, const void *buf, uint32_t count)
{
	return disk_transfer(HVFT_DISK_CMD_WRITE, sector, (uintptr_t)buf, count);
}

unsigned hvft_disk_reissues(void)
{
	return disk_reissue_count;
}

/* ------------------------------------------------------------------ */
/* CRC-32                                                              */
/* ------------------------------------------------------------------ */

static uint32_t crc32_table[256];
static int crc32_ready;

uint32_t hvft_crc32(const void *p, size_t n)
{
	const unsigned char *b = p;
	uint32_t c = 0xFFFFFFFFu;

	if (!crc32_ready) {
		for (uint32_t i = 0; i < 256; i++) {
			uint32_t v = i;
			for (int k = 0; k < 8; k++)
				v = (v >> 1) ^ (0xEDB88320u & (0u - (v & 1u)));
			crc32_table[i] = v;
		}
		crc32_ready = 1;
	}
	while (n--)
		c = crc32_table[(c ^ *b++) & 0xFF] ^ (c >> 8);
	return c ^ 0xFFFFFFFFu;
}

/* ------------------------------------------------------------------ */
/* printf                                                              */
/* ------------------------------------------------------------------ */

struct fmt_out {
	int count;
};

static void out_char(struct fmt_out *o, char c)
{
	hvft_putc(c);
	o->count++;
}

static void out_repeat(struct fmt_out *o, char c, int n)
{
	while (n-- > 0)
		out_char(o, c);
}

/* Format an unsigned magnitude with optional sign. */
static void out_number(struct fmt_out *o, uint64_t v, unsigned base, int upper,
		       int neg, int width, int zero, int left)
{
	char tmp[24];
	const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
	int n = 0, len, pad;

	do {
		tmp[n++] = digits[v % base];
		v /= base;
	} while (v);
	len = n + (neg ? 1 : 0);
	pad = width > len ? width - len : 0;

	if (!left && !zero)
		out_repeat(o, ' ', pad);
	if (neg)
		out_char(o, '-');
	if (!left && zero)
		out_repeat(o, '0', pad);
	while (n)
		out_char(o, tmp[--n]);
	if (left)
		out_repeat(o, ' ', pad);
}

static int hvft_vprintf(const char *fmt, va_list ap)
{
	struct fmt_out o = { 0 };

	for (; *fmt; fmt++) {
		int width = 0, zero = 0, left = 0, lng = 0;
		char c;

		if (*fmt != '%') {
			out_char(&o, *fmt);
			continue;
		}
		fmt++;
		for (;; fmt++) {
			if (*fmt == '0')
				zero = 1;
			else if (*fmt == '-')
				left = 1;
			else
				break;
		}
		while (*fmt >= '0' && *fmt <= '9')
			width = width * 10 + (*fmt++ - '0');
		while (*fmt == 'l') {
			lng++;
			fmt++;
		}
		if (*fmt == 'z') {
			lng = 1;
			fmt++;
		}
		c = *fmt;
		switch (c) {
		case 'd':
		case 'i': {
			int64_t v = lng ? va_arg(ap, long) : va_arg(ap, int);
			uint64_t mag = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
			out_number(&o, mag, 10, 0, v < 0, width, zero, left);
			break;
		}
		case 'u':
		case 'x':
		case 'X': {
			uint64_t v = lng ? va_arg(ap, unsigned long) : va_arg(ap, unsigned int);
			out_number(&o, v, c == 'u' ? 10 : 16, c == 'X', 0, width, zero, left);
			break;
		}
		case 'p': {
			uint64_t v = (uint64_t)(uintptr_t)va_arg(ap, void *);
			out_char(&o, '0');
			out_char(&o, 'x');
			out_number(&o, v, 16, 0, 0, width, zero, left);
			break;
		}
		case 'c': {
			char ch = (char)va_arg(ap, int);
			if (!left)
				out_repeat(&o, ' ', width - 1);
			out_char(&o, ch);
			if (left)
				out_repeat(&o, ' ', width - 1);
			break;
		}
		case 's': {
			const char *s = va_arg(ap, const char *);
			int len;
			if (!s)
				s = "(null)";
			len = (int)strlen(s);
			if (!left)
				out_repeat(&o, ' ', width - len);
			while (*s)
				out_char(&o, *s++);
			if (left)
				out_repeat(&o, ' ', width - len);
			break;
		}
		case '%':
			out_char(&o, '%');
			break;
		case '\0':
			return o.count;   /* stray '%' at the end */
		default:
			out_char(&o, '%');
			out_char(&o, c);
			break;
		}
	}
	return o.count;
}

int hvft_printf(const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = hvft_vprintf(fmt, ap);
	va_end(ap);
	return n;
}

/* ------------------------------------------------------------------ */
/* interrupts and exceptions                                           */
/* ------------------------------------------------------------------ */

static hvft_irq_handler_t irq_handlers[HVFT_NUM_IRQS];
static hvft_exception_handler_t exc_handlers[32];

void hvft_set_irq_handler(int irq, hvft_irq_handler_t fn)
{
	if (irq >= 0 && irq < HVFT_NUM_IRQS)
		irq_handlers[irq] = fn;
}

void hvft_set_exception_handler(int vector, hvft_exception_handler_t fn)
{
	if (vector >= 0 && vector < 32)
		exc_handlers[vector] = fn;
}

/* Called from isr_common in crt0.S with interrupts disabled. */
void hvft_trap(struct hvft_frame *f);
void hvft_trap(struct hvft_frame *f)
{
	uint64_t v = f->vector;

	if (v < 32) {
		hvft_exception_handler_t h = exc_handlers[v];
		if (h) {
			h(f);
			return;
		}
		hvft_printf("unhandled exception %lu at RIP 0x%lx\n", v, f->rip);
		hvft_poweroff(128 + (int)v);
	}
	if (v < HVFT_IRQ_VECTOR_BASE + HVFT_NUM_IRQS) {
		int irq = (int)(v - HVFT_IRQ_VECTOR_BASE);
		hvft_irq_handler_t h = irq_handlers[irq];
		if (h)
			h(irq);
		hvft_eoi(irq);
		return;
	}
	/* vectors 64..255: only reachable through a software "int n"; ignore */
}

/* ------------------------------------------------------------------ */
/* boot                                                                */
/* ------------------------------------------------------------------ */

#define HVFT_MAX_ARGS 256

static const struct hvft_bootinfo *boot_info;
static char *argv_table[HVFT_MAX_ARGS + 1];

const struct hvft_bootinfo *hvft_bootinfo(void)
{
	return boot_info;
}

uint64_t hvft_ram_size(void)
{
	return boot_info ? boot_info->ram_size : 0;
}

/* Called by _start on the .bss stack, after GDT/IDT setup. */
__attribute__((noreturn)) void hvft_crt_start(const struct hvft_bootinfo *bi);
__attribute__((noreturn)) void hvft_crt_start(const struct hvft_bootinfo *bi)
{
	int argc = 0;

	if (bi && bi->magic == HVFT_BOOT_MAGIC) {
		const char *p = bi->args;
		uint32_t limit = bi->args_len;
		uint32_t off = 0;

		/* whole struct fits in 4 KiB */
		if (limit > 4096 - (uint32_t)sizeof(*bi))
			limit = 4096 - (uint32_t)sizeof(*bi);
		boot_info = bi;
		while ((uint32_t)argc < bi->argc && argc < HVFT_MAX_ARGS && off < limit) {
			argv_table[argc++] = (char *)(p + off);
			while (off < limit && p[off])
				off++;
			off++;   /* skip NUL */
		}
	}
	argv_table[argc] = 0;
	hvft_poweroff(main(argc, argv_table));
}
