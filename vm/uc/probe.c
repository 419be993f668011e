// Probes of libunicorn's own behaviour, with no hvft hooks: the two
// library properties the hypervisor works around (docs/architecture.md),
// shown on the linked library so that a test sees whether they still hold.

#include <stdint.h>
#include <string.h>
#include <unicorn/unicorn.h>

#include "probe.h"

// A loop printing "abcdefghij" with OUT; in the OUT's block a load follows
// the OUT. The hook stops the engine at the 'e', and the run resumes.
static const uint8_t print_loop[] = {
	0x48, 0xbe, 0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // mov rsi, 0x2000
	0x66, 0xba, 0xe9, 0x00,                                     // mov dx, 0xe9
	0x8a, 0x06,                                                 // 1: mov al, [rsi]
	0x84, 0xc0, 0x74, 0x08,                                     // test al, al; jz 2f
	0xee,                                                       // out dx, al
	0x48, 0xff, 0xc6,                                           // inc rsi
	0x8a, 0x0e,                                                 // mov cl, [rsi]
	0xeb, 0xf2,                                                 // jmp 1b
	0xf4,                                                       // 2: hlt
};

typedef struct {
	char out[64];
	int n;
	int precise;
	int stopped;
	int pending;
} probe_print;

static void probe_out(uc_engine *uc, uint32_t port, int size, uint32_t value, void *ud) {
	probe_print *p = ud;
	if (p->n < (int)sizeof p->out - 1) p->out[p->n++] = (char)value;
	if ((char)value != 'e' || p->stopped) return;
	p->stopped = 1;
	if (p->precise) {
		p->pending = 1;
		uc_ctl_flush_tlb(uc);
	}
	uc_emu_stop(uc);
}

static bool probe_fill(uc_engine *uc, uint64_t vaddr, uc_mem_type type, uc_tlb_entry *e, void *ud) {
	probe_print *p = ud;
	if (p->pending) return false;
	e->paddr = vaddr;
	e->perms = UC_PROT_ALL;
	return true;
}

int hv_probe_stop_in_hook(int precise, char *out, int max) {
	uc_engine *uc;
	if (uc_open(UC_ARCH_X86, UC_MODE_64, &uc) != UC_ERR_OK) return -1;
	int rc = -2;
	probe_print p;
	memset(&p, 0, sizeof p);
	p.precise = precise;
	uc_hook h;
	if (uc_mem_map(uc, 0x1000, 0x2000, UC_PROT_ALL) != UC_ERR_OK) goto out;
	if (uc_mem_write(uc, 0x1000, print_loop, sizeof print_loop) != UC_ERR_OK) goto out;
	if (uc_mem_write(uc, 0x2000, "abcdefghij", 11) != UC_ERR_OK) goto out;
	if (uc_hook_add(uc, &h, UC_HOOK_INSN, (void *)probe_out, &p, 1, 0, UC_X86_INS_OUT) != UC_ERR_OK) goto out;
	if (precise) {
		if (uc_ctl_tlb_mode(uc, UC_TLB_VIRTUAL) != UC_ERR_OK) goto out;
		if (uc_hook_add(uc, &h, UC_HOOK_TLB_FILL, (void *)probe_fill, &p, 1, 0) != UC_ERR_OK) goto out;
	}
	uint64_t rip = 0x1000;
	for (int runs = 0; runs < 4; runs++) {
		p.pending = 0;
		uc_emu_start(uc, rip, 0x101d, 0, 0);
		uc_reg_read(uc, UC_X86_REG_RIP, &rip);
		if (rip == 0x101d) break;
	}
	rc = p.n < max ? p.n : max;
	memcpy(out, p.out, (size_t)rc);
out:
	uc_close(uc);
	return rc;
}

// A loop on one page that bumps a counter on that page, patches the
// immediate of a stub on that page, calls the stub and counts the calls
// that return a stale immediate (100 iterations).
static const uint8_t stale_loop[] = {
	0xb9, 0x64, 0x00, 0x00, 0x00,             // mov ecx, 100
	0x45, 0x31, 0xc0,                         // xor r8d, r8d
	0x48, 0xff, 0x04, 0x25, 0x00, 0x1f, 0x00, 0x00, // 1: inc qword [0x1f00]
	0x89, 0x0c, 0x25, 0x01, 0x18, 0x00, 0x00, // mov [0x1801], ecx
	0xba, 0x00, 0x18, 0x00, 0x00,             // mov edx, 0x1800
	0xff, 0xd2,                               // call rdx
	0x39, 0xc8, 0x74, 0x03,                   // cmp eax, ecx; je 2f
	0x49, 0xff, 0xc0,                         // inc r8
	0xff, 0xc9, 0x75, 0xdf,                   // 2: dec ecx; jnz 1b
	0xf4,                                     // hlt
};

static const uint8_t stale_stub[] = {0xb8, 0, 0, 0, 0, 0xc3}; // mov eax, imm32; ret

int hv_probe_stale_program(uint8_t *loop, int loop_max, uint8_t *stub, int stub_max) {
	if (loop_max < (int)sizeof stale_loop || stub_max < (int)sizeof stale_stub) return -1;
	memcpy(loop, stale_loop, sizeof stale_loop);
	memcpy(stub, stale_stub, sizeof stale_stub);
	return (int)sizeof stale_loop;
}

int hv_probe_stale_code(void) {
	uc_engine *uc;
	if (uc_open(UC_ARCH_X86, UC_MODE_64, &uc) != UC_ERR_OK) return -1;
	int rc = -2;
	const uint8_t *stub = stale_stub;
	if (uc_mem_map(uc, 0x1000, 0x1000, UC_PROT_ALL) != UC_ERR_OK) goto out;
	if (uc_mem_write(uc, 0x1000, stale_loop, sizeof stale_loop) != UC_ERR_OK) goto out;
	if (uc_mem_write(uc, 0x1800, stub, sizeof stale_stub) != UC_ERR_OK) goto out;
	uint64_t rsp = 0x1f00;
	uc_reg_write(uc, UC_X86_REG_RSP, &rsp);
	if (uc_emu_start(uc, 0x1000, 0x1000 + sizeof stale_loop, 0, 0) != UC_ERR_OK) goto out;
	uint64_t stale;
	uc_reg_read(uc, UC_X86_REG_R8, &stale);
	rc = (int)stale;
out:
	uc_close(uc);
	return rc;
}
