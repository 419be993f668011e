/*
 * hvft.h - guest SDK for the hvft board.
 *
 * The board (guest's view, see docs/board.md for the full description):
 *
 *  - Guest-physical RAM from 0 to ram_size (default 16 MiB). Long mode,
 *    paging off in the sense that addresses are identity-mapped. No MMIO.
 *  - The ELF image is loaded at 1 MiB (0x100000) from its PT_LOAD segments.
 *  - Boot information (struct hvft_bootinfo) lives at physical 0x1000.
 *  - Entry: RIP = ELF entry, RDI = 0x1000, RSP = top of RAM - 16, IF = 0,
 *    empty GDT and IDT. crt0.S installs its own GDT (code 0x08, data 0x10)
 *    and an IDT with 256 64-bit interrupt gates.
 *  - Devices are reached with port I/O only (table below). All ports are
 *    32-bit (inl/outl) except CONSOLE_TX, which is a byte port (outb).
 *  - IRQ n is delivered at IDT vector 32 + n, only while RFLAGS.IF = 1, on
 *    the current stack (no IST/TSS), through an interrupt gate (IF cleared
 *    on entry). Wait for an interrupt with "sti; hlt" (hvft_wait_for_interrupt).
 *  - CPUID is filtered: no TSC, no RDTSCP, no RDRAND, no RDSEED.
 */
#ifndef HVFT_H
#define HVFT_H

#include <stdint.h>
#include <stddef.h>

/* ---- memory map ---------------------------------------------------- */
#define HVFT_BOOTINFO_ADDR   0x1000UL
#define HVFT_IMAGE_BASE      0x100000UL
#define HVFT_BOOT_MAGIC      0x54465648u   /* 'HVFT' little-endian */
#define HVFT_BOOT_VERSION    1u
#define HVFT_BOARD_ID_VALUE  0x54465648u   /* value read from HVFT_PORT_BOARD_ID */

/* ---- port map ------------------------------------------------------ */
#define HVFT_PORT_CONSOLE_TX        0x500  /* out 8: write one byte to the console */
#define HVFT_PORT_CONSOLE_RX        0x501  /* in 32: next byte 0..255, 0xFFFFFFFF if empty */
#define HVFT_PORT_CONSOLE_RX_AVAIL  0x502  /* in 32: number of input bytes waiting */
#define HVFT_PORT_CLOCK_LO          0x510  /* in 32: latch monotonic ns clock, return low 32 bits */
#define HVFT_PORT_CLOCK_HI          0x511  /* in 32: high 32 bits of the latched value */
#define HVFT_PORT_RANDOM            0x520  /* in 32: 32 random bits */
#define HVFT_PORT_TIMER_PERIOD      0x530  /* out/in 32: timer period in us, 0 = stopped */
#define HVFT_PORT_PIC_MASK          0x540  /* out/in 32: bit n set = IRQ n masked (reset: all masked) */
#define HVFT_PORT_PIC_PENDING       0x541  /* in 32: bit n = IRQ n pending */
#define HVFT_PORT_PIC_EOI           0x542  /* out 32: IRQ number whose handler is done */
#define HVFT_PORT_PIC_INSERVICE     0x543  /* in 32: bit n = IRQ n delivered, not yet EOI'd */
#define HVFT_PORT_POWER_OFF         0x550  /* out 32: power off, value = exit code (host uses & 0xFF) */
#define HVFT_PORT_BOARD_ID          0x560  /* in 32: returns 0x54465648 */
#define HVFT_PORT_DISK_SECTOR       0x600  /* out 32: first sector of the next command */
#define HVFT_PORT_DISK_BUFFER       0x601  /* out 32: guest-physical buffer address */
#define HVFT_PORT_DISK_COUNT        0x602  /* out 32: number of sectors, 1..128 */
#define HVFT_PORT_DISK_COMMAND      0x603  /* out 32: HVFT_DISK_CMD_*: starts the operation */
#define HVFT_PORT_DISK_STATUS       0x604  /* in 32: HVFT_DISK_ST_* in the low byte, | HVFT_DISK_REFUSED */
#define HVFT_PORT_DISK_SECTORS      0x605  /* in 32: disk size in sectors, 0 = no disk */

#define HVFT_CONSOLE_RX_EMPTY       0xFFFFFFFFu

/* ---- block device (docs/board.md, "Block device") ------------------ */
#define HVFT_SECTOR_SIZE            512
#define HVFT_DISK_MAX_COUNT         128    /* sectors per command */
#define HVFT_DISK_CMD_READ          1u     /* disk -> RAM */
#define HVFT_DISK_CMD_WRITE         2u     /* RAM -> disk */
#define HVFT_DISK_ST_IDLE           0u
#define HVFT_DISK_ST_BUSY           1u
#define HVFT_DISK_ST_OK             2u
#define HVFT_DISK_ST_ERROR          3u
#define HVFT_DISK_ST_UNCERTAIN      4u     /* failover while in flight: reissue */
#define HVFT_DISK_ST_MASK           0xFFu
#define HVFT_DISK_REFUSED           0x100u /* last command refused: an operation was in flight */

/* ---- interrupts ---------------------------------------------------- */
#define HVFT_IRQ_TIMER    0
#define HVFT_IRQ_CONSOLE  1
#define HVFT_IRQ_DISK     2   /* block device: operation completed */
#define HVFT_NUM_IRQS     32  /* PIC registers are 32 bits wide */
#define HVFT_IRQ_VECTOR_BASE 32
#define HVFT_IRQ_VECTOR(n)   (HVFT_IRQ_VECTOR_BASE + (n))

/* exception vectors */
#define HVFT_EXC_DE   0   /* divide error */
#define HVFT_EXC_DB   1
#define HVFT_EXC_NMI  2
#define HVFT_EXC_BP   3
#define HVFT_EXC_OF   4
#define HVFT_EXC_BR   5
#define HVFT_EXC_UD   6   /* invalid opcode */
#define HVFT_EXC_NM   7
#define HVFT_EXC_DF   8   /* error code */
#define HVFT_EXC_TS   10  /* error code */
#define HVFT_EXC_NP   11  /* error code */
#define HVFT_EXC_SS   12  /* error code */
#define HVFT_EXC_GP   13  /* error code */
#define HVFT_EXC_PF   14  /* error code */
#define HVFT_EXC_MF   16
#define HVFT_EXC_AC   17  /* error code */
#define HVFT_EXC_MC   18
#define HVFT_EXC_XM   19

/* GDT selectors installed by crt0 */
#define HVFT_SEL_CODE 0x08
#define HVFT_SEL_DATA 0x10

/* ---- boot information (at HVFT_BOOTINFO_ADDR) ---------------------- */
struct hvft_bootinfo {
	uint32_t magic;     /* HVFT_BOOT_MAGIC */
	uint32_t version;   /* 1 */
	uint64_t ram_size;  /* bytes */
	uint32_t argc;      /* number of arguments */
	uint32_t args_len;  /* bytes used in args[] */
	char     args[];    /* argc NUL-terminated strings back to back; total <= 4 KiB */
};

/*
 * Saved state of an interrupted context, built by the vector stubs in
 * crt0.S (lowest address first). Everything is writable: the stubs restore
 * the general registers from here, and iretq uses rip/cs/rflags/rsp/ss,
 * so changing f->rip changes where execution resumes.
 */
struct hvft_frame {
	uint64_t r15, r14, r13, r12, r11, r10, r9, r8;
	uint64_t rbp, rdi, rsi, rdx, rcx, rbx, rax;
	uint64_t vector;      /* pushed by the stub */
	uint64_t error_code;  /* pushed by the CPU/board (8, 10-14, 17) or 0 by the stub */
	uint64_t rip, cs, rflags, rsp, ss;  /* hardware interrupt frame */
};

_Static_assert(sizeof(struct hvft_frame) == 22 * 8, "hvft_frame layout");

/* ---- inline helpers ------------------------------------------------ */
static inline void hvft_outb(uint16_t port, uint8_t v)
{
	__asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port) : "memory");
}

static inline uint8_t hvft_inb(uint16_t port)
{
	uint8_t v;
	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port) : "memory");
	return v;
}

static inline void hvft_outl(uint16_t port, uint32_t v)
{
	__asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port) : "memory");
}

static inline uint32_t hvft_inl(uint16_t port)
{
	uint32_t v;
	__asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port) : "memory");
	return v;
}

static inline void hvft_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t *eax,
			      uint32_t *ebx, uint32_t *ecx, uint32_t *edx)
{
	uint32_t a, b, c, d;
	__asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d)
			 : "a"(leaf), "c"(subleaf));
	if (eax) *eax = a;
	if (ebx) *ebx = b;
	if (ecx) *ecx = c;
	if (edx) *edx = d;
}

static inline void hvft_sti(void) { __asm__ volatile("sti" ::: "memory"); }
static inline void hvft_cli(void) { __asm__ volatile("cli" ::: "memory"); }
static inline void hvft_hlt(void) { __asm__ volatile("hlt" ::: "memory"); }

static inline uint64_t hvft_read_rflags(void)
{
	uint64_t f;
	__asm__ volatile("pushfq; popq %0" : "=r"(f) : : "memory");
	return f;
}

/* Enable interrupts and halt in one asm block: sti's interrupt shadow
 * guarantees no interrupt is taken between sti and hlt, so a wakeup
 * cannot be lost. Returns after one interrupt has been handled, with
 * interrupts enabled. */
static inline void hvft_wait_for_interrupt(void)
{
	__asm__ volatile("sti; hlt" ::: "memory");
}

/* ---- SDK (sdk/hvft.c) ---------------------------------------------- */
typedef void (*hvft_irq_handler_t)(int irq);
typedef void (*hvft_exception_handler_t)(struct hvft_frame *f);

/* console */
void hvft_putc(char c);
void hvft_puts(const char *s);            /* no newline appended */
void hvft_write(const void *buf, size_t len);
int  hvft_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int  hvft_console_read(char *buf, int max); /* non-blocking; returns bytes read */

/* devices */
uint64_t hvft_clock_ns(void);             /* CLOCK_LO then CLOCK_HI */
uint32_t hvft_random32(void);
void     hvft_timer_set_period_us(uint32_t us);
uint32_t hvft_timer_get_period_us(void);
uint32_t hvft_board_id(void);
void     hvft_irq_unmask(int irq);
void     hvft_irq_mask(int irq);
void     hvft_eoi(int irq);
__attribute__((noreturn)) void hvft_poweroff(int code);

/* block device. The first call installs an IRQ 2 handler and unmasks IRQ 2;
 * each operation waits for its completion with "cli; check; sti; hlt"
 * (never by polling the port) and returns with RFLAGS.IF as on entry.
 * read/write: 0 on success, -1 on error (bad arguments, no disk, device
 * error). Counts above 128 are split into several commands; count 0 is an
 * error. An UNCERTAIN completion (failover while in flight) is reissued
 * (same sector, buffer, count, command) and counted; a command refused
 * because an operation was in flight is reissued after that operation's
 * completion. The buffer must lie below 4 GiB (identity-mapped RAM). */
int      hvft_disk_sectors(void);         /* DISK_SECTORS; -1 if the port is absent (0xFFFFFFFF) */
int      hvft_disk_read(uint32_t sector, void *buf, uint32_t count);
int      hvft_disk_write(uint32_t sector, const void *buf, uint32_t count);
unsigned hvft_disk_reissues(void);        /* UNCERTAIN completions reissued so far */

/* interrupts and exceptions.
 * IRQ handlers run with IF=0; the dispatcher sends EOI after the handler
 * returns. IRQs without a handler are EOI'd and ignored.
 * Exceptions without a handler print "unhandled exception N at RIP 0xX"
 * (N decimal, X lowercase hex) and
 * power off with code 128+N. Passing NULL removes a handler. */
void hvft_set_irq_handler(int irq, hvft_irq_handler_t fn);
void hvft_set_exception_handler(int vector, hvft_exception_handler_t fn);

/* IDT access (the IDT is built by crt0.S) */
struct hvft_idt_gate {
	uint16_t offset_lo;
	uint16_t selector;
	uint8_t  ist;
	uint8_t  type_attr;   /* 0x8E: present, DPL 0, 64-bit interrupt gate */
	uint16_t offset_mid;
	uint32_t offset_hi;
	uint32_t reserved;
};
_Static_assert(sizeof(struct hvft_idt_gate) == 16, "idt gate size");
extern struct hvft_idt_gate hvft_idt[256];

/* boot information */
const struct hvft_bootinfo *hvft_bootinfo(void);
uint64_t hvft_ram_size(void);

/* helpers */
unsigned long hvft_atou(const char *s);   /* decimal (or 0x hex); stops at first non-digit */
int hvft_strcmp(const char *a, const char *b);
/* CRC-32 (IEEE 802.3 / zlib: reflected poly 0xEDB88320, init and xorout
 * 0xFFFFFFFF); hvft_crc32("123456789", 9) == 0xCBF43926 */
uint32_t hvft_crc32(const void *p, size_t n);

/* gcc may emit calls to these */
void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);

/* linker symbols (sdk/link.ld) */
extern char __hvft_image_start[], __hvft_image_end[];
extern char __bss_start[], __bss_end[];

/* the guest program */
int main(int argc, char **argv);

#endif /* HVFT_H */
