// Package uc is hvft's own small cgo binding to Unicorn 2.1 (Debian's
// libunicorn-dev), limited to what the hypervisor needs on x86-64: memory
// mapped once over a caller-owned backing store, a software-managed TLB
// (Unicorn's virtual TLB, whose misses a C fill hook answers), register
// access, start/stop, and the hooks the hypervisor traps through.
//
// Hot paths stay in C: the block hook that drives the epoch clock and the
// TLB fill hook never call into Go. Go callbacks exist only for rare events
// (port I/O, CPUID, exceptions). An Engine is not safe for concurrent use,
// and every call on it must come from the goroutine that runs the
// emulation, locked to its OS thread (runtime.LockOSThread).
package uc

/*
#cgo LDFLAGS: -lunicorn
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include <unicorn/unicorn.h>

// hv_ctx is shared by every hook of one engine. The block-clock and TLB
// fields are touched only from C on the hot paths; Go reads them between
// runs.
typedef struct {
	uintptr_t handle;
	uint64_t blocks;
	uint64_t limit;
	uint64_t last_addr;
	uint32_t last_size;
	int limit_hit;
	// The block hook is installed only while the clock runs (clock_on):
	// it is compiled into every translation, so switching it means
	// retranslating.
	int clock_on;
	uc_hook block_hook;
	// counting: the installed hook counts. A paused clock keeps the hook
	// (and the translations that call it) but counts nothing, so that
	// resuming needs no retranslation.
	int counting;

	// The software-managed TLB (UC_TLB_VIRTUAL with a fill hook). Unicorn's
	// own TLB caches 4 KiB translations; the hypervisor answers its misses
	// and models a TLB of its own (capacity entries of 1<<entry_shift
	// bytes): a miss in the model that finds it full evicts a victim and
	// drops the victim's pages from Unicorn's TLB (one page at a time when
	// Unicorn's tlb_flush_page is reachable, else the whole TLB), so every
	// access to a page of an entry not in the model misses into the hook.
	int tlb_on;
	uint64_t ram_size;
	uint32_t entry_shift;
	uint32_t capacity;
	int policy;             // 0 random, 1 fifo, 2 lru
	uint64_t rng;
	uint32_t used;
	uint64_t tick;
	uint64_t *slot_page;    // [capacity] modelled page number
	uint64_t *slot_tick;    // [capacity] install tick (fifo) or last fill (lru)
	uint32_t *resident;     // [ram_size >> entry_shift] slot+1, or 0
	// Dirty tracking: a page is filled without write permission until a
	// write fill asks for it. wmap marks the 4 KiB pages Unicorn may hold
	// writable (until the next flush); dmap marks pages written under an
	// entry that a flush has since dropped. Both lists are hashed at the
	// next epoch boundary.
	uint8_t *wmap;
	uint32_t *wlist;
	uint32_t *wpos;         // [page] index in wlist while wmap is set
	uint32_t wcount;
	// fmap marks the 4 KiB pages filled since the last whole flush (those
	// Unicorn may cache), flist lists them: an eviction flushes only the
	// victim's pages that were filled, each flush costing Unicorn a slice
	// of its jump cache.
	uint8_t *fmap;
	uint32_t *flist;
	uint32_t *fpos;         // [page] index in flist while fmap is set
	uint32_t fcount;
	uint8_t *dmap;
	uint32_t *dlist;
	uint32_t dcount;
	uint64_t fills, misses, evictions, flushes, page_flushes;
	// Unicorn's per-page flush (QEMU's tlb_flush_page, exported but not
	// part of its API: found with dlsym) and the CPU it takes; NULL when
	// absent, and then an eviction flushes the whole TLB.
	void (*flush_page)(void *cpu, uint64_t addr);
	void *cpu;
	// A page table (Linux processes): virtual pages translate through an
	// open-addressed hash of vpage+1 -> ppage<<3 | perms, kept by the
	// hypervisor. A fill that finds no entry, or one without the access's
	// permission, is refused; the refusal is recorded here.
	int pt_on;
	uint64_t *pt_keys;
	uint64_t *pt_vals;
	uint64_t pt_mask;
	uint64_t pt_count;
	int pt_refused;
	uint64_t pt_refused_addr;
	int pt_refused_type;
	// An access outside RAM: refused and recorded here.
	int fault;
	uint64_t fault_addr;
	int fault_type;

	// CPU state Unicorn keeps but exposes no register for, reached through
	// a context saved and restored in place (offsets calibrated at startup).
	uc_context *scratch;
	int off_old_exception;  // x86 "exception in flight" (double-fault logic)
	int off_hflags;         // hflags; bit 3 is the STI/MOV SS interrupt shadow

	// A precise stop (hv_stop_precise): every translation is flushed
	// from Unicorn's TLB and the next fill is refused, so the engine
	// stops before the first memory access after the stopping
	// instruction, or at the next block, whichever comes first, and
	// never in a way that makes part of a block run twice.
	int stop_pending;
	int stop_taken;
	// CPUState of the engine's one CPU, and where its "halted" flag
	// sits (calibrated): set by HLT, cleared at every uc_emu_start.
	void *cpu_state;
	int off_halted;

	// Exact invalidation of translated code (docs/architecture.md).
	// cmap marks the pages (physical) code was fetched from; Unicorn's
	// TLB never holds such a page writable, and a page it holds writable
	// is never executable, so a store into code always misses into the
	// fill hook. The first one switches the engine to precise mode
	// (smc_precise): a memory-write hook that is never called makes
	// Unicorn check every store against translated code, exactly.
	uint8_t *cmap;
	int smc_precise;
	uc_hook smc_hook;
	uint64_t code_pages, code_drops;
} hv_ctx;

static uc_err hv_remove_cache(uc_engine *uc, hv_ctx *c, uint64_t begin, uint64_t end);

extern uint32_t hvftGoIn(uintptr_t h, uint32_t port, int size);
extern void hvftGoOut(uintptr_t h, uint32_t port, int size, uint32_t value);
extern int hvftGoCPUID(uintptr_t h);
extern void hvftGoSyscall(uintptr_t h);
extern void hvftGoIntr(uintptr_t h, uint32_t intno);

// The data of a uc_context follows this header (uc_priv.h, Unicorn 2.1).
typedef struct {
	size_t context_size;
	int mode;
	int arch;
	int snapshot_level;
	char data[];
} hv_context_hdr;

#define HV_HF_INHIBIT_IRQ (1u << 3)

static char *hv_ctx_data(uc_context *c) { return ((hv_context_hdr *)c)->data; }
static size_t hv_ctx_size(uc_context *c) { return ((hv_context_hdr *)c)->context_size; }

// hv_env_after_exception does what a real CPU does once it has entered an
// exception handler, which Unicorn skips because the hypervisor delivers
// exceptions itself: no exception is in flight any more (else the next
// contributory one would become #DF), and no interrupt shadow survives.
static void hv_env_after_exception(uc_engine *uc, hv_ctx *c) {
	if (c->scratch == NULL || c->off_old_exception < 0) return;
	if (uc_context_save(uc, c->scratch) != UC_ERR_OK) return;
	char *d = hv_ctx_data(c->scratch);
	int32_t none = -1;
	memcpy(d + c->off_old_exception, &none, 4);
	uint32_t hf;
	memcpy(&hf, d + c->off_hflags, 4);
	hf &= ~HV_HF_INHIBIT_IRQ;
	memcpy(d + c->off_hflags, &hf, 4);
	uc_context_restore(uc, c->scratch);
}

// hv_set_cpl sets the privilege level the CPU runs at. Unicorn keeps it
// in hflags and recomputes it only when SS is loaded, which a Linux
// program under the hypervisor never does (system calls and exceptions
// are handled in hooks, without a ring change).
static uc_err hv_set_cpl(uc_engine *uc, hv_ctx *c, int cpl) {
	if (c->scratch == NULL) return UC_ERR_ARG;
	uc_err err = uc_context_save(uc, c->scratch);
	if (err != UC_ERR_OK) return err;
	char *d = hv_ctx_data(c->scratch);
	uint32_t hf;
	memcpy(&hf, d + c->off_hflags, 4);
	hf = (hf & ~3u) | (uint32_t)(cpl & 3);
	memcpy(d + c->off_hflags, &hf, 4);
	return uc_context_restore(uc, c->scratch);
}

static uc_err hv_get_cpl(uc_engine *uc, hv_ctx *c, int *cpl) {
	uc_err err = uc_context_save(uc, c->scratch);
	if (err != UC_ERR_OK) return err;
	uint32_t hf;
	memcpy(&hf, hv_ctx_data(c->scratch) + c->off_hflags, 4);
	*cpl = (int)(hf & 3);
	return UC_ERR_OK;
}

static uc_err hv_read_shadow(uc_engine *uc, hv_ctx *c, int *on) {
	uc_err err = uc_context_save(uc, c->scratch);
	if (err != UC_ERR_OK) return err;
	uint32_t hf;
	memcpy(&hf, hv_ctx_data(c->scratch) + c->off_hflags, 4);
	*on = (hf & HV_HF_INHIBIT_IRQ) != 0;
	return UC_ERR_OK;
}

static uc_err hv_write_shadow(uc_engine *uc, hv_ctx *c, int on) {
	uc_err err = uc_context_save(uc, c->scratch);
	if (err != UC_ERR_OK) return err;
	char *d = hv_ctx_data(c->scratch);
	uint32_t hf;
	memcpy(&hf, d + c->off_hflags, 4);
	if (on) hf |= HV_HF_INHIBIT_IRQ; else hf &= ~HV_HF_INHIBIT_IRQ;
	memcpy(d + c->off_hflags, &hf, 4);
	return uc_context_restore(uc, c->scratch);
}

static uint32_t tr_in(uc_engine *uc, uint32_t port, int size, void *ud) {
	return hvftGoIn(((hv_ctx *)ud)->handle, port, size);
}
static void tr_out(uc_engine *uc, uint32_t port, int size, uint32_t value, void *ud) {
	hvftGoOut(((hv_ctx *)ud)->handle, port, size, value);
}
static int tr_cpuid(uc_engine *uc, void *ud) {
	return hvftGoCPUID(((hv_ctx *)ud)->handle);
}
static void tr_intr(uc_engine *uc, uint32_t intno, void *ud) {
	hv_ctx *c = (hv_ctx *)ud;
	hvftGoIntr(c->handle, intno);
	hv_env_after_exception(uc, c);
}
// Unicorn 2.1 reports #UD to the invalid-instruction hook and then, when
// that hook claims it, to the interrupt hook as vector 6: claiming it here
// lets one path (tr_intr) deliver every exception.
static bool tr_invalid(uc_engine *uc, void *ud) { return true; }

// hv_block is the epoch clock: it counts translation blocks entered and asks
// Unicorn to stop once limit blocks have run. A stop asked for in a block
// hook takes effect before that block runs, and the block is entered (and
// hooked) again when the run resumes: so the block past the limit stops the
// run and is not counted, and the clock reads exactly the limit.
static void hv_block(uc_engine *uc, uint64_t addr, uint32_t size, void *ud) {
	hv_ctx *c = (hv_ctx *)ud;
	if (!c->counting) return;
	if (c->limit != 0 && c->blocks == c->limit) {
		c->limit_hit = 1;
		uc_emu_stop(uc);
		return;
	}
	c->blocks++;
	c->last_addr = addr;
	c->last_size = size;
}

static uint64_t hv_rand(hv_ctx *c) {
	// xorshift64*: a seeded, cheap, well-mixed sequence.
	uint64_t x = c->rng;
	x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
	c->rng = x;
	return x * 0x2545F4914F6CDD1DULL;
}

// hv_tlb_flush drops every translation Unicorn caches. Pages it may have
// held writable become "written, to hash" so the next boundary still sees
// them, and must ask again (a write fill) before their next store.
static void hv_tlb_flush(uc_engine *uc, hv_ctx *c) {
	uc_ctl_flush_tlb(uc);
	for (uint32_t i = 0; i < c->wcount; i++) {
		uint32_t pg = c->wlist[i];
		c->wmap[pg] = 0;
		if (!c->dmap[pg]) {
			c->dmap[pg] = 1;
			c->dlist[c->dcount++] = pg;
		}
	}
	c->wcount = 0;
	for (uint32_t i = 0; i < c->fcount; i++) c->fmap[c->flist[i]] = 0;
	c->fcount = 0;
	c->flushes++;
}

// hv_filled notes that Unicorn may now cache page pg.
static inline void hv_filled(hv_ctx *c, uint32_t pg) {
	if (c->fmap[pg]) return;
	c->fmap[pg] = 1;
	c->fpos[pg] = c->fcount;
	c->flist[c->fcount++] = pg;
}

// hv_flush_one drops page pg from Unicorn's TLB with the per-page flush
// (which must exist): a page Unicorn may have held writable becomes
// "written, to hash", and must ask again (a write fill) before its next
// store.
static void hv_flush_one(hv_ctx *c, uint32_t pg) {
	c->flush_page(c->cpu, (uint64_t)pg << 12);
	if (c->fmap[pg]) {
		c->fmap[pg] = 0;
		uint32_t fat = c->fpos[pg], flast = c->flist[--c->fcount];
		c->flist[fat] = flast;
		c->fpos[flast] = fat;
	}
	if (c->wmap[pg]) {
		c->wmap[pg] = 0;
		uint32_t at = c->wpos[pg], last = c->wlist[--c->wcount];
		c->wlist[at] = last;
		c->wpos[last] = at;
		if (!c->dmap[pg]) {
			c->dmap[pg] = 1;
			c->dlist[c->dcount++] = pg;
		}
	}
}

// hv_tlb_evict drops the pages of modelled entry mp from Unicorn's TLB.
// Only identity translation allows it (with a page table, the model is
// of physical pages and Unicorn caches virtual ones), and only for entries
// of up to 64 pages; otherwise the whole TLB goes. A page held writable
// becomes "written, to hash" and must ask again before its next store, as
// after a full flush.
static void hv_tlb_evict(uc_engine *uc, hv_ctx *c, uint64_t mp) {
	uint32_t per = 1u << (c->entry_shift - 12);
	if (c->flush_page == NULL || c->pt_on || per > 64) {
		hv_tlb_flush(uc, c);
		return;
	}
	uint64_t first = mp << (c->entry_shift - 12);
	uint64_t pages = c->ram_size >> 12;
	for (uint64_t pg = first; pg < first + per && pg < pages; pg++) {
		if (!c->fmap[pg]) continue; // not cached since the last flush
		hv_flush_one(c, (uint32_t)pg);
	}
	c->page_flushes++;
}

// hv_find_flush_page looks up Unicorn's per-page TLB flush and the CPU
// it needs. Both are QEMU internals Unicorn 2.1 exports with its target's
// suffix; a build without them keeps whole flushes.
static void hv_find_flush_page(uc_engine *uc, hv_ctx *c) {
	void *(*get_cpu)(uc_engine *, int) = (void *(*)(uc_engine *, int))dlsym(RTLD_DEFAULT, "qemu_get_cpu_x86_64");
	void (*flush)(void *, uint64_t) = (void (*)(void *, uint64_t))dlsym(RTLD_DEFAULT, "tlb_flush_page_x86_64");
	if (get_cpu == NULL || flush == NULL) return;
	// Unicorn leaves its one CPU's index unassigned (-1).
	void *cpu = get_cpu(uc, -1);
	if (cpu == NULL) cpu = get_cpu(uc, 0);
	if (cpu == NULL) return;
	c->cpu = cpu;
	c->flush_page = flush;
}

static void hv_model_touch(uc_engine *uc, hv_ctx *c, uint64_t vaddr) {
	uint64_t mp = vaddr >> c->entry_shift;
	uint32_t s = c->resident[mp];
	c->tick++;
	if (s != 0) {
		if (c->policy == 2) c->slot_tick[s - 1] = c->tick;
		return;
	}
	c->misses++;
	uint32_t slot;
	if (c->used < c->capacity) {
		slot = c->used++;
	} else {
		if (c->policy == 0) {
			slot = (uint32_t)(hv_rand(c) % c->capacity);
		} else {
			slot = 0;
			for (uint32_t i = 1; i < c->capacity; i++)
				if (c->slot_tick[i] < c->slot_tick[slot]) slot = i;
		}
		uint64_t victim = c->slot_page[slot];
		c->resident[victim] = 0;
		c->evictions++;
		hv_tlb_evict(uc, c, victim);
	}
	c->slot_page[slot] = mp;
	c->slot_tick[slot] = c->tick;
	c->resident[mp] = slot + 1;
}

static uint64_t hv_pt_slot(hv_ctx *c, uint64_t vpage) {
	uint64_t h = (vpage * 0x9E3779B97F4A7C15ULL) >> 17;
	return h & c->pt_mask;
}

// hv_pt_find returns the slot holding vpage, or the empty slot where it
// would go.
static uint64_t hv_pt_find(hv_ctx *c, uint64_t vpage) {
	uint64_t i = hv_pt_slot(c, vpage);
	while (c->pt_keys[i] != 0 && c->pt_keys[i] != vpage + 1) i = (i + 1) & c->pt_mask;
	return i;
}

static int hv_pt_set(hv_ctx *c, uint64_t vpage, uint64_t ppage, int perms) {
	uint64_t i = hv_pt_find(c, vpage);
	if (c->pt_keys[i] == 0) {
		if (c->pt_count >= c->pt_mask / 2) return -1;
		c->pt_count++;
		c->pt_keys[i] = vpage + 1;
	}
	c->pt_vals[i] = ppage << 3 | (uint64_t)(perms & 7);
	return 0;
}

// hv_pt_del removes vpage, shifting later entries of its run back so that
// lookups need no tombstones.
static void hv_pt_del(hv_ctx *c, uint64_t vpage) {
	uint64_t i = hv_pt_find(c, vpage);
	if (c->pt_keys[i] == 0) return;
	c->pt_keys[i] = 0;
	c->pt_count--;
	uint64_t j = i;
	for (;;) {
		j = (j + 1) & c->pt_mask;
		if (c->pt_keys[j] == 0) return;
		uint64_t home = hv_pt_slot(c, c->pt_keys[j] - 1);
		// Move j into the hole at i unless its home lies cyclically in (i, j].
		int stays = (i <= j) ? (i < home && home <= j) : (i < home || home <= j);
		if (stays) continue;
		c->pt_keys[i] = c->pt_keys[j];
		c->pt_vals[i] = c->pt_vals[j];
		c->pt_keys[j] = 0;
		i = j;
	}
}

static int hv_pt_get(hv_ctx *c, uint64_t vpage, uint64_t *ppage, int *perms) {
	uint64_t i = hv_pt_find(c, vpage);
	if (c->pt_keys[i] == 0) return 0;
	*ppage = c->pt_vals[i] >> 3;
	*perms = (int)(c->pt_vals[i] & 7);
	return 1;
}

// hv_smc_cb is the memory-write hook of precise mode. Its range holds
// no RAM, so it is never called: its existence alone keeps every TLB entry
// of Unicorn "not dirty", so that every store is checked against the
// translated code of its page.
static void hv_smc_cb(uc_engine *uc, uc_mem_type type, uint64_t addr, int size, int64_t value, void *ud) {}

#define HV_SMC_HOOK_AT 0xFFFFFFFFFFFFFFF0ULL

// hv_enter_precise switches to precise code invalidation: from here on
// Unicorn checks every store (slower, and exact, however code and data
// share pages). Entries made before the hook existed may be clean, so all
// of them go.
static void hv_enter_precise(uc_engine *uc, hv_ctx *c) {
	if (c->smc_precise) return;
	if (uc_hook_add(uc, &c->smc_hook, UC_HOOK_MEM_WRITE, (void *)hv_smc_cb, c, HV_SMC_HOOK_AT, HV_SMC_HOOK_AT) != UC_ERR_OK) return;
	c->smc_precise = 1;
	hv_tlb_flush(uc, c);
}

// hv_drop_writable removes page pg's writable translation from Unicorn's
// TLB before code is fetched from it: the page becomes "written, to hash",
// and its next store must miss into the fill hook.
static void hv_drop_writable(uc_engine *uc, hv_ctx *c, uint32_t pg) {
	c->code_drops++;
	if (c->flush_page == NULL || c->pt_on) {
		hv_tlb_flush(uc, c);
		return;
	}
	hv_flush_one(c, pg);
}

// hv_code_perms applies the code-page rule to a fill of physical page pg
// and returns the permissions the access's kind may get: W and X never
// together, a fetch makes a page code, a store into code switches to
// precise mode (where every store is checked and the rule is not needed).
static int hv_code_perms(uc_engine *uc, hv_ctx *c, uint32_t pg, uc_mem_type type) {
	if (c->smc_precise) {
		if (type == UC_MEM_WRITE && !c->wmap[pg]) {
			c->wmap[pg] = 1;
			c->wpos[pg] = c->wcount;
			c->wlist[c->wcount++] = pg;
		}
		return c->wmap[pg] ? UC_PROT_ALL : (UC_PROT_READ | UC_PROT_EXEC);
	}
	switch (type) {
	case UC_MEM_FETCH:
		if (!c->cmap[pg]) {
			if (c->wmap[pg]) hv_drop_writable(uc, c, pg);
			c->cmap[pg] = 1;
			c->code_pages++;
		}
		return UC_PROT_READ | UC_PROT_EXEC;
	case UC_MEM_WRITE:
		if (c->cmap[pg]) {
			hv_enter_precise(uc, c);
			return hv_code_perms(uc, c, pg, type);
		}
		if (!c->wmap[pg]) {
			c->wmap[pg] = 1;
			c->wpos[pg] = c->wcount;
			c->wlist[c->wcount++] = pg;
		}
		return UC_PROT_READ | UC_PROT_WRITE;
	default:
		if (c->cmap[pg]) return UC_PROT_READ | UC_PROT_EXEC;
		return c->wmap[pg] ? (UC_PROT_READ | UC_PROT_WRITE) : UC_PROT_READ;
	}
}

// hv_stop_precise stops the engine without letting any part of a block
// run twice. uc_emu_stop alone, asked for inside an instruction hook, is
// seen by the check Unicorn places after every memory access, which
// leaves the block in the middle and restarts it from its first
// instruction. Here every translation leaves Unicorn's TLB and the next
// fill is refused: the first memory access after the stopping instruction
// then stops the engine with the CPU state restored exactly before that
// access; with none before the block ends, the next block does not start.
static void hv_stop_precise(uc_engine *uc, hv_ctx *c) {
	if (c->tlb_on && !c->stop_pending) {
		c->stop_pending = 1;
		hv_tlb_flush(uc, c);
	}
	uc_emu_stop(uc);
}

static int hv_halted(hv_ctx *c) {
	if (c->cpu_state == NULL || c->off_halted < 0) return -1;
	uint32_t v;
	memcpy(&v, (char *)c->cpu_state + c->off_halted, 4);
	return v != 0;
}

// hv_pt_fill answers a miss through the page table. A refused fill makes
// Unicorn stop the run with UC_ERR_EXCEPTION (or, for its own probes,
// fail quietly): the last refusal tells the hypervisor where.
static bool hv_pt_fill(uc_engine *uc, hv_ctx *c, uint64_t vaddr, uc_mem_type type, uc_tlb_entry *e) {
	uint64_t ppage;
	int perms;
	int need = type == UC_MEM_WRITE ? UC_PROT_WRITE : type == UC_MEM_FETCH ? UC_PROT_EXEC : UC_PROT_READ;
	if (vaddr == 0xFFFFFFFFFFFFF000ULL) {
		// The hypervisor's "until" address, which Unicorn translates when
		// a run stops: no program maps it (it is kernel space), so it
		// points past RAM, where any real access still fails.
		e->paddr = c->ram_size;
		e->perms = UC_PROT_ALL;
		return true;
	}
	if (c->stop_pending) {
		c->stop_taken = 1;
		return false;
	}
	if (!hv_pt_get(c, vaddr >> 12, &ppage, &perms) || !(perms & need)) {
		c->pt_refused = 1;
		c->pt_refused_addr = vaddr;
		c->pt_refused_type = (int)type;
		return false;
	}
	uint64_t paddr = ppage << 12;
	c->fills++;
	hv_model_touch(uc, c, paddr);
	e->paddr = paddr;
	e->perms = perms & hv_code_perms(uc, c, (uint32_t)ppage, type);
	return true;
}

// hv_tlb_fill answers a miss of Unicorn's TLB: identity translation,
// write permission only for a store (which marks the page written).
// Addresses outside RAM translate to unmapped memory, where the access
// fails through hv_unmapped; refusing the fill instead would also fail
// Unicorn's own probes (it translates its exit address at every start).
static bool hv_tlb_fill(uc_engine *uc, uint64_t vaddr, uc_mem_type type, uc_tlb_entry *e, void *ud) {
	hv_ctx *c = (hv_ctx *)ud;
	if (c->pt_on) return hv_pt_fill(uc, c, vaddr, type, e);
	e->paddr = vaddr;
	if (vaddr >= c->ram_size && !c->stop_pending) {
		e->perms = UC_PROT_ALL;
		return true;
	}
	if (c->stop_pending) {
		c->stop_taken = 1;
		return false;
	}
	c->fills++;
	hv_model_touch(uc, c, vaddr);
	uint32_t pg = (uint32_t)(vaddr >> 12);
	hv_filled(c, pg);
	e->perms = hv_code_perms(uc, c, pg, type);
	return true;
}

// hv_unmapped records an access outside RAM and refuses it.
static bool hv_unmapped(uc_engine *uc, uc_mem_type type, uint64_t addr, int size, int64_t value, void *ud) {
	hv_ctx *c = (hv_ctx *)ud;
	if (!c->fault) {
		c->fault = 1;
		c->fault_addr = addr;
		c->fault_type = (int)type;
	}
	return false;
}

// hv_take_written hands the pages written since the last call to out (at
// most 2 * pages entries), clears the flushed-dirty list, and, when more
// than keep pages are held writable, flushes so that the set shrinks.
static uint32_t hv_take_written(uc_engine *uc, hv_ctx *c, uint32_t *out, uint32_t keep) {
	uint32_t n = 0;
	for (uint32_t i = 0; i < c->dcount; i++) {
		uint32_t pg = c->dlist[i];
		c->dmap[pg] = 0;
		if (!c->wmap[pg]) out[n++] = pg;
	}
	c->dcount = 0;
	for (uint32_t i = 0; i < c->wcount; i++) out[n++] = c->wlist[i];
	if (c->wcount > keep) {
		hv_tlb_flush(uc, c);
		for (uint32_t i = 0; i < c->dcount; i++) c->dmap[c->dlist[i]] = 0;
		c->dcount = 0;
	}
	return n;
}

static uc_err hv_hook_in(uc_engine *uc, uc_hook *h, hv_ctx *c) {
	return uc_hook_add(uc, h, UC_HOOK_INSN, (void *)tr_in, c, 1, 0, UC_X86_INS_IN);
}
static uc_err hv_hook_out(uc_engine *uc, uc_hook *h, hv_ctx *c) {
	return uc_hook_add(uc, h, UC_HOOK_INSN, (void *)tr_out, c, 1, 0, UC_X86_INS_OUT);
}
static uc_err hv_hook_cpuid(uc_engine *uc, uc_hook *h, hv_ctx *c) {
	return uc_hook_add(uc, h, UC_HOOK_INSN, (void *)tr_cpuid, c, 1, 0, UC_X86_INS_CPUID);
}
static void tr_syscall(uc_engine *uc, void *ud) {
	hvftGoSyscall(((hv_ctx *)ud)->handle);
}
static uc_err hv_hook_syscall(uc_engine *uc, uc_hook *h, hv_ctx *c) {
	return uc_hook_add(uc, h, UC_HOOK_INSN, (void *)tr_syscall, c, 1, 0, UC_X86_INS_SYSCALL);
}
static uc_err hv_hook_intr(uc_engine *uc, uc_hook *h, hv_ctx *c) {
	return uc_hook_add(uc, h, UC_HOOK_INTR, (void *)tr_intr, c, 1, 0);
}
static uc_err hv_hook_invalid(uc_engine *uc, uc_hook *h, hv_ctx *c) {
	return uc_hook_add(uc, h, UC_HOOK_INSN_INVALID, (void *)tr_invalid, c, 1, 0);
}
// hv_set_clock installs or removes the block hook. Translations made
// before carry the old choice compiled in, so all of them are dropped.
static uc_err hv_set_clock(uc_engine *uc, hv_ctx *c, int on) {
	c->counting = on;
	if (on == c->clock_on) return UC_ERR_OK;
	uc_err err;
	if (on) {
		err = uc_hook_add(uc, &c->block_hook, UC_HOOK_BLOCK, (void *)hv_block, c, 1, 0);
	} else {
		err = uc_hook_del(uc, c->block_hook);
	}
	if (err != UC_ERR_OK) return err;
	c->clock_on = on;
	if (on && c->ram_size && !c->pt_on) return hv_remove_cache(uc, c, 0, c->ram_size);
	if (on && c->pt_on) uc_ctl_flush_tb(uc);
	return UC_ERR_OK;
}
static uc_err hv_hook_tlb(uc_engine *uc, uc_hook *h, hv_ctx *c) {
	uc_err err = uc_ctl_tlb_mode(uc, UC_TLB_VIRTUAL);
	if (err != UC_ERR_OK) return err;
	return uc_hook_add(uc, h, UC_HOOK_TLB_FILL, (void *)hv_tlb_fill, c, 1, 0);
}
static uc_err hv_hook_unmapped(uc_engine *uc, uc_hook *h, hv_ctx *c) {
	return uc_hook_add(uc, h, UC_HOOK_MEM_UNMAPPED, (void *)hv_unmapped, c, 1, 0);
}
static uc_err hv_flush_tlb(uc_engine *uc, hv_ctx *c) {
	if (c->tlb_on) {
		hv_tlb_flush(uc, c);
		return UC_ERR_OK;
	}
	return uc_ctl_flush_tlb(uc);
}
static uc_err hv_flush_code(uc_engine *uc) { return uc_ctl_flush_tb(uc); }

// QEMU's invalidation of a physical range (exported by Unicorn 2.1 with
// its target's suffix). uc_ctl_remove_cache instead translates its start
// address as an instruction fetch, which would go through the fill hook
// and mark a data page as code. RAM is one block mapped at 0, so a
// guest-physical address is its RAM offset.
typedef void (*hv_inval_fn)(uc_engine *, uint64_t, uint64_t);

static uc_err hv_remove_cache(uc_engine *uc, hv_ctx *c, uint64_t begin, uint64_t end) {
	static hv_inval_fn inval;
	static int looked;
	if (!looked) {
		inval = (hv_inval_fn)dlsym(RTLD_DEFAULT, "tb_invalidate_phys_range_x86_64");
		looked = 1;
	}
	if (inval != NULL && c->tlb_on) {
		inval(uc, begin, end);
		return UC_ERR_OK;
	}
	return uc_ctl_remove_cache(uc, begin, end);
}

static uc_err hv_reg_read_batch(uc_engine *uc, int *regs, uint64_t *vals, int n) {
	void *ptrs[64];
	if (n > 64) return UC_ERR_ARG;
	for (int i = 0; i < n; i++) { vals[i] = 0; ptrs[i] = &vals[i]; }
	return uc_reg_read_batch(uc, regs, ptrs, n);
}
static uc_err hv_reg_write_batch(uc_engine *uc, int *regs, uint64_t *vals, int n) {
	void *ptrs[64];
	if (n > 64) return UC_ERR_ARG;
	for (int i = 0; i < n; i++) ptrs[i] = &vals[i];
	return uc_reg_write_batch(uc, regs, ptrs, n);
}
static uc_err hv_read_wide(uc_engine *uc, int *regs, uint8_t *out, int n) {
	for (int i = 0; i < n; i++) {
		uint8_t tmp[64];
		memset(tmp, 0, sizeof tmp);
		uc_err err = uc_reg_read(uc, regs[i], tmp);
		if (err != UC_ERR_OK) return err;
		memcpy(out + 16 * i, tmp, 16);
	}
	return UC_ERR_OK;
}
static uc_err hv_mmr_read(uc_engine *uc, int reg, uint64_t *base, uint32_t *limit, uint16_t *sel, uint32_t *flags) {
	uc_x86_mmr m;
	memset(&m, 0, sizeof m);
	uc_err err = uc_reg_read(uc, reg, &m);
	*base = m.base; *limit = m.limit; *sel = m.selector; *flags = m.flags;
	return err;
}
static uc_err hv_mmr_write(uc_engine *uc, int reg, uint64_t base, uint32_t limit, uint16_t sel, uint32_t flags) {
	uc_x86_mmr m;
	m.base = base; m.limit = limit; m.selector = sel; m.flags = flags;
	return uc_reg_write(uc, reg, &m);
}
static uc_err hv_msr_read(uc_engine *uc, uint32_t id, uint64_t *v) {
	uc_x86_msr m = { id, 0 };
	uc_err err = uc_reg_read(uc, UC_X86_REG_MSR, &m);
	*v = m.value;
	return err;
}
static uc_err hv_msr_write(uc_engine *uc, uint32_t id, uint64_t v) {
	uc_x86_msr m = { id, v };
	return uc_reg_write(uc, UC_X86_REG_MSR, &m);
}

// hv_state_req is a whole CPU state read in one call (a state hash at
// every epoch boundary would otherwise cross from Go to C once per
// descriptor register and MSR). err_at names the failing item: 0..
// scalars, then MMRs, MSRs, wide registers.
typedef struct {
	int *regs; uint64_t *vals; int nregs;
	int *mmrs; uint64_t *mmr_base; uint32_t *mmr_limit; uint16_t *mmr_sel; uint32_t *mmr_flags; int nmmrs;
	uint32_t *msrs; uint64_t *msr_vals; int nmsrs;
	int *wide; uint8_t *wide_out; int nwide;
	int err_at;
} hv_state_req;

static uc_err hv_read_state(uc_engine *uc, hv_state_req *q) {
	uc_err err = hv_reg_read_batch(uc, q->regs, q->vals, q->nregs);
	q->err_at = 0;
	if (err != UC_ERR_OK) return err;
	for (int i = 0; i < q->nmmrs; i++) {
		q->err_at = q->nregs + i;
		err = hv_mmr_read(uc, q->mmrs[i], &q->mmr_base[i], &q->mmr_limit[i], &q->mmr_sel[i], &q->mmr_flags[i]);
		if (err != UC_ERR_OK) return err;
	}
	for (int i = 0; i < q->nmsrs; i++) {
		q->err_at = q->nregs + q->nmmrs + i;
		err = hv_msr_read(uc, q->msrs[i], &q->msr_vals[i]);
		if (err != UC_ERR_OK) return err;
	}
	q->err_at = q->nregs + q->nmmrs + q->nmsrs;
	return hv_read_wide(uc, q->wide, q->wide_out, q->nwide);
}

// Calibration: find where this library keeps old_exception and hflags in
// a saved context, by raising known exceptions on a scratch engine.
typedef struct {
	uc_context *ctx[4];
	int n;
} hv_cal;

static void hv_cal_intr(uc_engine *uc, uint32_t intno, void *ud) {
	hv_cal *k = (hv_cal *)ud;
	if (k->n < 4) uc_context_save(uc, k->ctx[k->n++]);
	uc_emu_stop(uc);
}
static void hv_cal_block(uc_engine *uc, uint64_t addr, uint32_t size, void *ud) {
	uint64_t *left = (uint64_t *)ud;
	if (*left > 0 && --*left == 0) uc_emu_stop(uc);
}

// hv_calibrate returns 0 and the two offsets, or a negative step number.
static int hv_calibrate(int *off_old, int *off_hflags, size_t *ctx_size) {
	uc_engine *uc;
	if (uc_open(UC_ARCH_X86, UC_MODE_64, &uc) != UC_ERR_OK) return -1;
	int rc = -2;
	hv_cal k;
	memset(&k, 0, sizeof k);
	uc_context *before = NULL, *sti1 = NULL, *sti2 = NULL;
	uc_hook hi, hb;
	uint64_t left = 0;
	static const uint8_t code[] = {
		0x31, 0xc9, 0xf7, 0xf1, 0xf4,             // 0x1000: xor ecx,ecx; div ecx (#DE)
		0x66, 0xb8, 0xf8, 0xff, 0x0f, 0x00, 0xd0, 0xf4, // 0x1005: mov ax,0xfff8; lldt ax (#GP -> #DF)
		0xfb, 0x90, 0x90, 0xf4,                   // 0x100d: sti; nop; nop; hlt
	};
	if (uc_mem_map(uc, 0x1000, 0x1000, UC_PROT_ALL) != UC_ERR_OK) goto out;
	if (uc_mem_write(uc, 0x1000, code, sizeof code) != UC_ERR_OK) goto out;
	for (int i = 0; i < 4; i++) if (uc_context_alloc(uc, &k.ctx[i]) != UC_ERR_OK) goto out;
	if (uc_context_alloc(uc, &before) || uc_context_alloc(uc, &sti1) || uc_context_alloc(uc, &sti2)) goto out;
	if (uc_hook_add(uc, &hi, UC_HOOK_INTR, (void *)hv_cal_intr, &k, 1, 0) != UC_ERR_OK) goto out;
	if (uc_hook_add(uc, &hb, UC_HOOK_BLOCK, (void *)hv_cal_block, &left, 1, 0) != UC_ERR_OK) goto out;
	uint64_t rax = 0x1122334455667788ULL;
	uc_reg_write(uc, UC_X86_REG_RAX, &rax);
	uc_context_save(uc, before);
	rc = -3;
	if (memcmp(hv_ctx_data(before), &rax, 8) != 0) goto out;
	uc_emu_start(uc, 0x1000, 0x1005, 0, 0);
	uc_emu_start(uc, 0x1005, 0x100d, 0, 0);
	rc = -4;
	if (k.n != 2) goto out;
	size_t size = hv_ctx_size(before);
	int found = -1, count = 0;
	for (size_t off = 0; off + 4 <= size; off += 4) {
		int32_t a, b, c;
		memcpy(&a, hv_ctx_data(before) + off, 4);
		memcpy(&b, hv_ctx_data(k.ctx[0]) + off, 4);
		memcpy(&c, hv_ctx_data(k.ctx[1]) + off, 4);
		if (a == -1 && b == 0 && c == 8) { found = (int)off; count++; }
	}
	rc = -5;
	if (count != 1) goto out;
	// hflags follows regs[16], eip, eflags, cc_dst, cc_src, cc_src2 (8
	// bytes each), cc_op and df (4 each) in CPUX86State.
	int hf = 16 * 8 + 8 + 8 + 3 * 8 + 4 + 4;
	uint32_t h0, h1, h2;
	memcpy(&h0, hv_ctx_data(before) + hf, 4);
	rc = -6;
	if ((h0 & (3u << 14)) != (3u << 14)) goto out; // HF_LMA | HF_CS64 in long mode
	// A block hook that stops the engine runs before its block: a stop
	// requested at the second block leaves the engine just past the sti.
	left = 2;
	uc_emu_start(uc, 0x100d, 0x1011, 0, 0);
	uc_context_save(uc, sti1);
	left = 2;
	uint64_t rip;
	uc_reg_read(uc, UC_X86_REG_RIP, &rip);
	uc_emu_start(uc, rip, 0x1011, 0, 0);
	uc_context_save(uc, sti2);
	memcpy(&h1, hv_ctx_data(sti1) + hf, 4);
	memcpy(&h2, hv_ctx_data(sti2) + hf, 4);
	rc = -7;
	if (!(h1 & HV_HF_INHIBIT_IRQ) || (h2 & HV_HF_INHIBIT_IRQ)) goto out;
	*off_old = found;
	*off_hflags = hf;
	*ctx_size = size;
	rc = 0;
out:
	for (int i = 0; i < 4; i++) if (k.ctx[i]) uc_context_free(k.ctx[i]);
	if (before) uc_context_free(before);
	if (sti1) uc_context_free(sti1);
	if (sti2) uc_context_free(sti2);
	uc_close(uc);
	return rc;
}

// hv_find_halted locates CPUState's "halted" flag: HLT sets it, and
// uc_emu_start clears it, so after a run it says whether a HLT ran. There
// is no API for it; its offset is found on a scratch engine, between the
// CPUState and the CPU registers (found by a marker in RAX), as the one
// word that is 1 after two runs ended by HLT and 0 after two runs stopped
// by a block hook. Returns the offset, or a negative step number.
static void hv_halt_block(uc_engine *uc, uint64_t addr, uint32_t size, void *ud) {
	uint64_t *left = (uint64_t *)ud;
	if (*left > 0 && --*left == 0) uc_emu_stop(uc);
}

static int hv_find_halted(void) {
	void *(*get_cpu)(uc_engine *, int) = (void *(*)(uc_engine *, int))dlsym(RTLD_DEFAULT, "qemu_get_cpu_x86_64");
	if (get_cpu == NULL) return -1;
	uc_engine *uc;
	if (uc_open(UC_ARCH_X86, UC_MODE_64, &uc) != UC_ERR_OK) return -2;
	int rc = -3;
	uint32_t *snap[4] = {0};
	uc_hook hb;
	uint64_t left = 0;
	// 0x1000: nop; nop; hlt.  0x1010: jmp 0x1010 (stopped by the hook)
	static const uint8_t code[] = {0x90, 0x90, 0xf4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xeb, 0xfe};
	if (uc_mem_map(uc, 0x1000, 0x1000, UC_PROT_ALL) != UC_ERR_OK) goto out;
	if (uc_mem_write(uc, 0x1000, code, sizeof code) != UC_ERR_OK) goto out;
	if (uc_hook_add(uc, &hb, UC_HOOK_BLOCK, (void *)hv_halt_block, &left, 1, 0) != UC_ERR_OK) goto out;
	void *cpu = get_cpu(uc, -1);
	if (cpu == NULL) cpu = get_cpu(uc, 0);
	rc = -4;
	if (cpu == NULL) goto out;
	uint64_t marker = 0x6876667448414c54ULL;
	uc_reg_write(uc, UC_X86_REG_RAX, &marker);
	int env = -1;
	for (int off = 0; off < (1 << 20); off += 8) {
		if (memcmp((char *)cpu + off, &marker, 8) == 0) { env = off; break; }
	}
	rc = -5;
	if (env <= 0) goto out;
	int words = env / 4;
	for (int i = 0; i < 4; i++) {
		snap[i] = malloc((size_t)words * 4);
		if (snap[i] == NULL) goto out;
	}
	for (int i = 0; i < 4; i++) {
		if (i % 2 == 0) {
			left = 0;
			uc_emu_start(uc, 0x1000, 0xFFFFFFFFFFFFFFFFULL, 0, 0);
		} else {
			left = 3;
			uc_emu_start(uc, 0x1010, 0xFFFFFFFFFFFFFFFFULL, 0, 0);
		}
		memcpy(snap[i], cpu, (size_t)words * 4);
	}
	int found = -1, count = 0;
	for (int w = 0; w < words; w++) {
		if (snap[0][w] == 1 && snap[2][w] == 1 && snap[1][w] == 0 && snap[3][w] == 0) {
			found = w * 4;
			count++;
		}
	}
	rc = -6;
	if (count != 1) goto out;
	rc = found;
out:
	for (int i = 0; i < 4; i++) free(snap[i]);
	uc_close(uc);
	return rc;
}

// hv_bind_cpu finds the engine's CPU, which exists once the engine has
// been used (Unicorn creates it lazily).
static void hv_bind_cpu(uc_engine *uc, hv_ctx *c) {
	void *(*get_cpu)(uc_engine *, int) = (void *(*)(uc_engine *, int))dlsym(RTLD_DEFAULT, "qemu_get_cpu_x86_64");
	if (get_cpu == NULL) return;
	void *cpu = get_cpu(uc, -1);
	if (cpu == NULL) cpu = get_cpu(uc, 0);
	c->cpu_state = cpu;
}
*/
import "C"

import (
	"fmt"
	"runtime/cgo"
	"sort"
	"sync"
	"unsafe"
)

// Error is a failed Unicorn call: the operation and Unicorn's own message.
type Error struct {
	Op   string
	Code int
	Msg  string
}

func (e *Error) Error() string { return fmt.Sprintf("unicorn %s: %s (code %d)", e.Op, e.Msg, e.Code) }

// ErrInsnInvalid is Unicorn's code for an instruction it cannot decode.
const ErrInsnInvalid = int(C.UC_ERR_INSN_INVALID)

// checkAt is check for an operation on an address or register: the
// message is formatted only on failure, since these calls sit on the
// per-epoch path.
func checkAt(op string, at uint64, err C.uc_err) error {
	if err == C.UC_ERR_OK {
		return nil
	}
	return check(fmt.Sprintf("%s %#x", op, at), err)
}

func check(op string, err C.uc_err) error {
	if err == C.UC_ERR_OK {
		return nil
	}
	return &Error{Op: op, Code: int(err), Msg: C.GoString(C.uc_strerror(err))}
}

// Version reports the linked Unicorn library's version as
// "major.minor.patch". Replicas must run the same one: translation-block
// boundaries, and so the epoch clock, differ between versions.
func Version() string {
	var major, minor C.uint
	v := C.uc_version(&major, &minor)
	return fmt.Sprintf("%d.%d.%d", major, minor, (v>>8)&0xff)
}

// RequireVersion fails unless the linked library is at least major.minor.
func RequireVersion(major, minor uint) error {
	var ma, mi C.uint
	C.uc_version(&ma, &mi)
	if uint(ma) < major || (uint(ma) == major && uint(mi) < minor) {
		return fmt.Errorf("libunicorn %s is too old: hvft needs %d.%d or newer (make deps installs it)", Version(), major, minor)
	}
	return nil
}

// Prot is a set of memory permissions.
type Prot int

// Memory permissions.
const (
	ProtNone  Prot = Prot(C.UC_PROT_NONE)
	ProtRead  Prot = Prot(C.UC_PROT_READ)
	ProtWrite Prot = Prot(C.UC_PROT_WRITE)
	ProtExec  Prot = Prot(C.UC_PROT_EXEC)
	ProtAll   Prot = Prot(C.UC_PROT_ALL)
)

// Access is the kind of a memory access.
type Access int

// Memory access kinds a refused access reports.
const (
	Read  Access = Access(C.UC_MEM_READ_UNMAPPED)
	Write Access = Access(C.UC_MEM_WRITE_UNMAPPED)
	Fetch Access = Access(C.UC_MEM_FETCH_UNMAPPED)
)

func (a Access) String() string {
	switch a {
	case Read:
		return "read of unmapped memory"
	case Write:
		return "write to unmapped memory"
	case Fetch:
		return "fetch from unmapped memory"
	}
	return fmt.Sprintf("memory access %d", int(a))
}

// Handler receives the engine's rare events. Each method runs on the
// emulation thread, inside Unicorn, and may call back into the Engine.
type Handler interface {
	// In answers an IN instruction.
	In(port uint32, size int) uint32
	// Out receives an OUT instruction.
	Out(port uint32, size int, value uint32)
	// CPUID handles a CPUID instruction; it returns true when it has set
	// RAX..RDX itself and Unicorn must not execute the instruction.
	CPUID() bool
	// Interrupt receives every CPU exception (#UD included) and software
	// interrupt, with RIP at the faulting instruction (after an INT n: past
	// it). Once it returns, the engine clears the exception-in-flight state
	// and the interrupt shadow, as a CPU does on entering a handler.
	Interrupt(intno uint32)
}

// Engine is one Unicorn x86-64 instance.
type Engine struct {
	h      *C.uc_engine
	ctx    *C.hv_ctx
	handle cgo.Handle
	hooks  []C.uc_hook
	taken  []C.uint32_t     // scratch for TakeWritten
	owned  []unsafe.Pointer // C memory freed with the engine (StateReader)
}

// layout is where this library keeps CPU state that has no register; it is
// a property of the linked library, computed once.
type layout struct {
	oldException, hflags int
	contextSize          int
	halted               int // in CPUState
}

var calibrated = sync.OnceValues(func() (layout, error) {
	var old, hf C.int
	var size C.size_t
	if rc := C.hv_calibrate(&old, &hf, &size); rc != 0 {
		return layout{}, fmt.Errorf("libunicorn %s: its CPU state layout is not the one hvft knows (calibration step %d failed); hvft supports Unicorn 2.1", Version(), -rc)
	}
	halted := int(C.hv_find_halted())
	if halted < 0 {
		return layout{}, fmt.Errorf("libunicorn %s: hvft cannot find where it records a HLT (calibration step %d failed); hvft supports Unicorn 2.1", Version(), -halted)
	}
	return layout{oldException: int(old), hflags: int(hf), contextSize: int(size), halted: halted}, nil
})

// Open creates an x86-64 engine with no hooks.
func Open() (*Engine, error) {
	if err := RequireVersion(2, 1); err != nil {
		return nil, err
	}
	lay, err := calibrated()
	if err != nil {
		return nil, err
	}
	var h *C.uc_engine
	if err := check("open", C.uc_open(C.UC_ARCH_X86, C.UC_MODE_64, &h)); err != nil {
		return nil, err
	}
	ctx := (*C.hv_ctx)(C.calloc(1, C.sizeof_hv_ctx))
	ctx.off_old_exception = C.int(lay.oldException)
	ctx.off_hflags = C.int(lay.hflags)
	ctx.off_halted = C.int(lay.halted)
	if err := check("context_alloc", C.uc_context_alloc(h, &ctx.scratch)); err != nil {
		C.free(unsafe.Pointer(ctx))
		C.uc_close(h)
		return nil, err
	}
	return &Engine{h: h, ctx: ctx}, nil
}

// Close releases the engine and its hooks.
func (e *Engine) Close() error {
	if e.h == nil {
		return nil
	}
	err := check("close", C.uc_close(e.h))
	e.h = nil
	c := e.ctx
	C.uc_context_free(c.scratch)
	for _, p := range []unsafe.Pointer{unsafe.Pointer(c.slot_page), unsafe.Pointer(c.slot_tick),
		unsafe.Pointer(c.resident), unsafe.Pointer(c.wmap), unsafe.Pointer(c.wlist), unsafe.Pointer(c.wpos), unsafe.Pointer(c.fmap), unsafe.Pointer(c.flist), unsafe.Pointer(c.fpos),
		unsafe.Pointer(c.dmap), unsafe.Pointer(c.dlist), unsafe.Pointer(c.cmap), unsafe.Pointer(c.pt_keys), unsafe.Pointer(c.pt_vals)} {
		C.free(p)
	}
	C.free(unsafe.Pointer(c))
	e.ctx = nil
	for _, p := range e.owned {
		C.free(p)
	}
	e.owned = nil
	if e.handle != 0 {
		e.handle.Delete()
		e.handle = 0
	}
	return err
}

// Hooks installs h for IN, OUT, CPUID and exceptions, and the C block hook
// that drives the block clock. It may be called once.
func (e *Engine) Hooks(h Handler) error {
	if e.handle != 0 {
		return fmt.Errorf("unicorn hooks: already installed")
	}
	e.handle = cgo.NewHandle(h)
	e.ctx.handle = C.uintptr_t(e.handle)
	var hk C.uc_hook
	add := func(op string, err C.uc_err) error {
		if err := check(op, err); err != nil {
			return err
		}
		e.hooks = append(e.hooks, hk)
		return nil
	}
	if err := add("hook IN", C.hv_hook_in(e.h, &hk, e.ctx)); err != nil {
		return err
	}
	if err := add("hook OUT", C.hv_hook_out(e.h, &hk, e.ctx)); err != nil {
		return err
	}
	if err := add("hook CPUID", C.hv_hook_cpuid(e.h, &hk, e.ctx)); err != nil {
		return err
	}
	if err := add("hook interrupts", C.hv_hook_intr(e.h, &hk, e.ctx)); err != nil {
		return err
	}
	if err := add("hook invalid instructions", C.hv_hook_invalid(e.h, &hk, e.ctx)); err != nil {
		return err
	}
	return check("hook blocks", C.hv_set_clock(e.h, e.ctx, 1))
}

// SetBlockClock starts or stops the block clock. A running clock costs a
// call per translation block entered; a stopped one costs nothing, but the
// clock does not advance and no block limit applies. Switching drops every
// translation (the hook is compiled into them): it costs a retranslation
// of the code the guest runs next.
func (e *Engine) SetBlockClock(on bool) error {
	v := C.int(0)
	if on {
		v = 1
	}
	return check("switch the block clock", C.hv_set_clock(e.h, e.ctx, v))
}

// PauseBlockClock stops the block clock but leaves its hook installed:
// the guest pays a call per block that counts nothing, and the clock
// restarts (SetBlockClock(true)) without a retranslation. Which of the two
// ways a clock is stopped changes nothing the guest or the state hash
// sees: the clock does not advance either way.
func (e *Engine) PauseBlockClock() { e.ctx.counting = 0 }

// BlockClockOn reports whether the block clock counts.
func (e *Engine) BlockClockOn() bool { return e.ctx.counting != 0 }

// BlockHookInstalled reports whether the block clock's hook is compiled
// into translations (running or paused).
func (e *Engine) BlockHookInstalled() bool { return e.ctx.clock_on != 0 }

// Policy is the modelled TLB's replacement policy.
type Policy int

// Replacement policies of the modelled TLB.
const (
	PolicyRandom Policy = iota
	PolicyFIFO
	PolicyLRU
)

// SoftTLB configures the software-managed TLB.
type SoftTLB struct {
	// RAMSize bounds guest-physical memory: an access at or above it is
	// refused (the run stops; FillFault says where).
	RAMSize uint64
	// EntrySize and Entries model the hypervisor's TLB: a miss that finds
	// Entries entries of EntrySize bytes in use evicts one by Policy and
	// drops its pages from Unicorn's TLB.
	EntrySize uint64
	Entries   int
	Policy    Policy
	Seed      uint64
	// WholeFlushes makes every eviction flush all of Unicorn's TLB, as
	// before the per-page flush (for comparison in benchmarks and tests).
	WholeFlushes bool
}

// PageSize is the granularity of Unicorn's TLB and of dirty tracking.
const PageSize = 4096

// EnableSoftTLB switches Unicorn to its virtual TLB and installs the fill
// hook. Translation is the identity below RAMSize; every page starts
// without write permission, so the first store to it since the last flush
// is seen (TakeWritten).
func (e *Engine) EnableSoftTLB(t SoftTLB) error {
	if e.ctx.tlb_on != 0 {
		return fmt.Errorf("software TLB: already enabled")
	}
	if t.RAMSize == 0 || t.RAMSize%PageSize != 0 || t.RAMSize>>12 > 1<<32-1 {
		return fmt.Errorf("software TLB: RAM size %#x must be a non-zero multiple of %d below 16 TiB", t.RAMSize, PageSize)
	}
	if t.EntrySize < PageSize || t.EntrySize&(t.EntrySize-1) != 0 || t.Entries < 1 {
		return fmt.Errorf("software TLB: %d entries of %d bytes (want at least one entry of a power of two >= %d)", t.Entries, t.EntrySize, PageSize)
	}
	c := e.ctx
	shift := 0
	for uint64(1)<<shift < t.EntrySize {
		shift++
	}
	pages := t.RAMSize / PageSize
	modelled := (t.RAMSize + t.EntrySize - 1) >> shift
	c.ram_size = C.uint64_t(t.RAMSize)
	c.entry_shift = C.uint32_t(shift)
	c.capacity = C.uint32_t(t.Entries)
	c.policy = C.int(t.Policy)
	c.rng = C.uint64_t(t.Seed*0x9E3779B97F4A7C15 | 1)
	c.slot_page = (*C.uint64_t)(C.calloc(C.size_t(t.Entries), 8))
	c.slot_tick = (*C.uint64_t)(C.calloc(C.size_t(t.Entries), 8))
	c.resident = (*C.uint32_t)(C.calloc(C.size_t(modelled), 4))
	c.wmap = (*C.uint8_t)(C.calloc(C.size_t(pages), 1))
	c.wlist = (*C.uint32_t)(C.calloc(C.size_t(pages), 4))
	c.wpos = (*C.uint32_t)(C.calloc(C.size_t(pages), 4))
	c.fmap = (*C.uint8_t)(C.calloc(C.size_t(pages), 1))
	c.flist = (*C.uint32_t)(C.calloc(C.size_t(pages), 4))
	c.fpos = (*C.uint32_t)(C.calloc(C.size_t(pages), 4))
	c.dmap = (*C.uint8_t)(C.calloc(C.size_t(pages), 1))
	c.dlist = (*C.uint32_t)(C.calloc(C.size_t(pages), 4))
	c.cmap = (*C.uint8_t)(C.calloc(C.size_t(pages), 1))
	if c.cmap == nil || c.slot_page == nil || c.slot_tick == nil || c.resident == nil || c.wmap == nil || c.wlist == nil || c.wpos == nil || c.fmap == nil || c.flist == nil || c.fpos == nil || c.dmap == nil || c.dlist == nil {
		return fmt.Errorf("software TLB: out of memory for %d pages", pages)
	}
	e.taken = make([]C.uint32_t, pages)
	C.hv_find_flush_page(e.h, c)
	if t.WholeFlushes {
		c.flush_page = nil
	}
	var hk C.uc_hook
	if err := check("hook TLB fill", C.hv_hook_tlb(e.h, &hk, c)); err != nil {
		return err
	}
	e.hooks = append(e.hooks, hk)
	if err := check("hook unmapped memory", C.hv_hook_unmapped(e.h, &hk, c)); err != nil {
		return err
	}
	e.hooks = append(e.hooks, hk)
	c.tlb_on = 1
	return nil
}

// TLBStats counts the software TLB's work.
type TLBStats struct {
	Fills     uint64 // misses of Unicorn's TLB answered by the fill hook
	Misses    uint64 // misses of the modelled TLB
	Evictions uint64 // modelled entries evicted
	Flushes   uint64 // flushes of all of Unicorn's TLB (re-arming, requests; evictions without a per-page flush)
	// PageEvictions are evictions that dropped only the victim's pages
	// from Unicorn's TLB.
	PageEvictions uint64
	// CodePages counts pages code was first fetched from; CodeDrops the
	// writable translations dropped because code was fetched from their
	// page.
	CodePages, CodeDrops uint64
	// PreciseCode reports that a store into translated code switched
	// the engine to checking every store (docs/architecture.md).
	PreciseCode bool
}

// TLBStats returns the counters.
func (e *Engine) TLBStats() TLBStats {
	c := e.ctx
	return TLBStats{Fills: uint64(c.fills), Misses: uint64(c.misses), Evictions: uint64(c.evictions), Flushes: uint64(c.flushes),
		PageEvictions: uint64(c.page_flushes), CodePages: uint64(c.code_pages), CodeDrops: uint64(c.code_drops), PreciseCode: c.smc_precise != 0}
}

// FlushTLB drops every translation Unicorn caches.
func (e *Engine) FlushTLB() error { return check("flush TLB", C.hv_flush_tlb(e.h, e.ctx)) }

// TakeWritten calls fn with the base of every 4 KiB page the guest may have
// written since the previous call, and starts a new interval. When more
// than keep pages are held writable it flushes Unicorn's TLB, so that they
// must be written through a fill again before they count.
func (e *Engine) TakeWritten(keep int, fn func(page uint64)) {
	if e.ctx.tlb_on == 0 {
		return
	}
	n := C.hv_take_written(e.h, e.ctx, &e.taken[0], C.uint32_t(keep))
	for _, pg := range e.taken[:n] {
		fn(uint64(pg) * PageSize)
	}
}

// FillFault reports an access outside RAM the engine refused since the
// last ClearFillFault.
func (e *Engine) FillFault() (addr uint64, access Access, ok bool) {
	c := e.ctx
	return uint64(c.fault_addr), Access(c.fault_type), c.fault != 0
}

// ClearFillFault forgets a refused fill.
func (e *Engine) ClearFillFault() { e.ctx.fault = 0 }

// SetCPL sets the current privilege level (0 or 3): a Linux program runs
// in ring 3, where RDTSC faults once CR4.TSD is set and privileged
// instructions fault as on Linux.
func (e *Engine) SetCPL(cpl int) error {
	return check("set CPL", C.hv_set_cpl(e.h, e.ctx, C.int(cpl)))
}

// CPL reads the current privilege level.
func (e *Engine) CPL() (int, error) {
	var v C.int
	err := check("read CPL", C.hv_get_cpl(e.h, e.ctx, &v))
	return int(v), err
}

// SyscallHandler receives the SYSCALL instruction: on return, execution
// goes on after it (Unicorn performs nothing of the instruction itself).
type SyscallHandler interface {
	Syscall()
}

// HookSyscall sends every SYSCALL to the handler Hooks installed, which
// must implement SyscallHandler.
func (e *Engine) HookSyscall() error {
	if e.handle == 0 {
		return fmt.Errorf("unicorn syscall hook: install Hooks first")
	}
	if _, ok := e.handle.Value().(SyscallHandler); !ok {
		return fmt.Errorf("unicorn syscall hook: the handler does not take system calls")
	}
	var hk C.uc_hook
	if err := check("hook SYSCALL", C.hv_hook_syscall(e.h, &hk, e.ctx)); err != nil {
		return err
	}
	e.hooks = append(e.hooks, hk)
	return nil
}

// EnablePageTable makes the software TLB translate through a page table
// the caller keeps with MapPage and UnmapPage, in place of the identity,
// for up to maxPages mapped pages. Call it after EnableSoftTLB, before the
// first run.
func (e *Engine) EnablePageTable(maxPages uint64) error {
	c := e.ctx
	if c.tlb_on == 0 || c.pt_on != 0 {
		return fmt.Errorf("page table: enable the software TLB first, and only once")
	}
	size := uint64(1024)
	for size < 2*maxPages+2 {
		size *= 2
	}
	c.pt_keys = (*C.uint64_t)(C.calloc(C.size_t(size), 8))
	c.pt_vals = (*C.uint64_t)(C.calloc(C.size_t(size), 8))
	if c.pt_keys == nil || c.pt_vals == nil {
		return fmt.Errorf("page table: out of memory for %d entries", size)
	}
	c.pt_mask = C.uint64_t(size - 1)
	c.pt_on = 1
	return nil
}

// MapPage maps the virtual page at vaddr to the physical page at paddr
// with prot. A changed or removed translation needs FlushTLB before the
// guest runs again.
func (e *Engine) MapPage(vaddr, paddr uint64, prot Prot) error {
	if paddr >= uint64(e.ctx.ram_size) || vaddr%PageSize != 0 || paddr%PageSize != 0 {
		return fmt.Errorf("page table: cannot map %#x to %#x (RAM ends at %#x)", vaddr, paddr, uint64(e.ctx.ram_size))
	}
	if C.hv_pt_set(e.ctx, C.uint64_t(vaddr/PageSize), C.uint64_t(paddr/PageSize), C.int(prot)) != 0 {
		return fmt.Errorf("page table: full")
	}
	return nil
}

// PageTableEntry is one mapping of the page table.
type PageTableEntry struct {
	VAddr, PAddr uint64
	Prot         Prot
}

// PageTable lists every mapping, in virtual-address order.
func (e *Engine) PageTable() []PageTableEntry {
	c := e.ctx
	if c.pt_on == 0 {
		return nil
	}
	n := uint64(c.pt_mask) + 1
	keys := unsafe.Slice((*uint64)(unsafe.Pointer(c.pt_keys)), n)
	vals := unsafe.Slice((*uint64)(unsafe.Pointer(c.pt_vals)), n)
	var out []PageTableEntry
	for i, k := range keys {
		if k != 0 {
			out = append(out, PageTableEntry{VAddr: (k - 1) * PageSize, PAddr: vals[i] >> 3 * PageSize, Prot: Prot(vals[i] & 7)})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].VAddr < out[j].VAddr })
	return out
}

// ClearPageTable removes every mapping.
func (e *Engine) ClearPageTable() {
	c := e.ctx
	if c.pt_on == 0 {
		return
	}
	n := uint64(c.pt_mask) + 1
	clear(unsafe.Slice((*uint64)(unsafe.Pointer(c.pt_keys)), n))
	c.pt_count = 0
}

// FlushCode drops every translation of guest code (Unicorn's tb_flush:
// milliseconds, for when translations cannot be found by address).
func (e *Engine) FlushCode() error { return check("flush code", C.hv_flush_code(e.h)) }

// UnmapPage removes the virtual page at vaddr.
func (e *Engine) UnmapPage(vaddr uint64) { C.hv_pt_del(e.ctx, C.uint64_t(vaddr/PageSize)) }

// Translate looks vaddr up in the page table.
func (e *Engine) Translate(vaddr uint64) (paddr uint64, prot Prot, ok bool) {
	var pp C.uint64_t
	var perms C.int
	if C.hv_pt_get(e.ctx, C.uint64_t(vaddr/PageSize), &pp, &perms) == 0 {
		return 0, 0, false
	}
	return uint64(pp)*PageSize + vaddr%PageSize, Prot(perms), true
}

// PageFault reports the last fill the page table refused since
// ClearPageFault: the address and the access.
func (e *Engine) PageFault() (vaddr uint64, access Access, ok bool) {
	c := e.ctx
	var a Access
	switch C.uc_mem_type(c.pt_refused_type) {
	case C.UC_MEM_WRITE:
		a = Write
	case C.UC_MEM_FETCH:
		a = Fetch
	default:
		a = Read
	}
	return uint64(c.pt_refused_addr), a, c.pt_refused != 0
}

// ClearPageFault forgets a refused fill.
func (e *Engine) ClearPageFault() { e.ctx.pt_refused = 0 }

// InvalidateCode discards translations of guest code in the physical
// range [addr, addr+size): a host write into guest RAM is invisible to
// code already translated until this is called.
func (e *Engine) InvalidateCode(addr, size uint64) error {
	if size == 0 {
		return nil
	}
	return checkAt("invalidate code at", addr, C.hv_remove_cache(e.h, e.ctx, C.uint64_t(addr), C.uint64_t(addr+size)))
}

// InterruptShadow reports whether the last instruction executed was STI or
// MOV SS, which delay interrupts by one instruction.
func (e *Engine) InterruptShadow() (bool, error) {
	var on C.int
	err := check("read interrupt shadow", C.hv_read_shadow(e.h, e.ctx, &on))
	return on != 0, err
}

// SetInterruptShadow sets or clears the interrupt shadow (a restore).
func (e *Engine) SetInterruptShadow(on bool) error {
	v := C.int(0)
	if on {
		v = 1
	}
	return check("write interrupt shadow", C.hv_write_shadow(e.h, e.ctx, v))
}

// Blocks is the block clock: the number of translation blocks entered since
// the hooks were installed (or since SetBlocks).
func (e *Engine) Blocks() uint64 { return uint64(e.ctx.blocks) }

// SetBlocks sets the block clock, as when a snapshot is restored.
func (e *Engine) SetBlocks(n uint64) { e.ctx.blocks = C.uint64_t(n) }

// SetBlockLimit arms the clock to stop the engine when it reaches n (0
// disarms it) and clears the limit-hit flag.
func (e *Engine) SetBlockLimit(n uint64) {
	e.ctx.limit = C.uint64_t(n)
	e.ctx.limit_hit = 0
}

// BlockLimitHit reports whether the last run stopped because the clock
// reached its limit.
func (e *Engine) BlockLimitHit() bool { return e.ctx.limit_hit != 0 }

// LastBlock is the address and size of the most recently entered block.
func (e *Engine) LastBlock() (addr uint64, size uint32) {
	return uint64(e.ctx.last_addr), uint32(e.ctx.last_size)
}

// MapPtr maps [addr, addr+size) onto caller-owned memory at ptr, which must
// stay valid and unmoved until unmapped (memory outside the Go heap).
func (e *Engine) MapPtr(addr, size uint64, prot Prot, ptr unsafe.Pointer) error {
	return checkAt("map", addr,
		C.uc_mem_map_ptr(e.h, C.uint64_t(addr), C.size_t(size), C.uint32_t(prot), ptr))
}

// Map maps [addr, addr+size) onto memory Unicorn allocates.
func (e *Engine) Map(addr, size uint64, prot Prot) error {
	return checkAt("map", addr,
		C.uc_mem_map(e.h, C.uint64_t(addr), C.size_t(size), C.uint32_t(prot)))
}

// MemRead reads mapped guest memory into buf.
func (e *Engine) MemRead(addr uint64, buf []byte) error {
	if len(buf) == 0 {
		return nil
	}
	return checkAt("read memory at", addr,
		C.uc_mem_read(e.h, C.uint64_t(addr), unsafe.Pointer(&buf[0]), C.size_t(len(buf))))
}

// MemWrite writes data into mapped guest memory.
func (e *Engine) MemWrite(addr uint64, data []byte) error {
	if len(data) == 0 {
		return nil
	}
	return checkAt("write memory at", addr,
		C.uc_mem_write(e.h, C.uint64_t(addr), unsafe.Pointer(&data[0]), C.size_t(len(data))))
}

// RegRead reads a register of at most 64 bits.
func (e *Engine) RegRead(reg Reg) (uint64, error) {
	var v C.uint64_t
	err := checkAt("read register", uint64(reg), C.uc_reg_read(e.h, C.int(reg), unsafe.Pointer(&v)))
	return uint64(v), err
}

// RegWrite writes a register of at most 64 bits.
func (e *Engine) RegWrite(reg Reg, v uint64) error {
	cv := C.uint64_t(v)
	return checkAt("write register", uint64(reg), C.uc_reg_write(e.h, C.int(reg), unsafe.Pointer(&cv)))
}

// RegReadBatch reads regs into vals (same length, at most 64).
func (e *Engine) RegReadBatch(regs []Reg, vals []uint64) error {
	if len(regs) != len(vals) || len(regs) > 64 {
		return fmt.Errorf("unicorn read registers: %d registers, %d values (at most 64)", len(regs), len(vals))
	}
	if len(regs) == 0 {
		return nil
	}
	var cregs [64]C.int
	var cvals [64]C.uint64_t
	for i, r := range regs {
		cregs[i] = C.int(r)
	}
	if err := check("read registers", C.hv_reg_read_batch(e.h, &cregs[0], &cvals[0], C.int(len(regs)))); err != nil {
		return err
	}
	for i := range vals {
		vals[i] = uint64(cvals[i])
	}
	return nil
}

// RegWriteBatch writes vals into regs (same length, at most 64).
func (e *Engine) RegWriteBatch(regs []Reg, vals []uint64) error {
	if len(regs) != len(vals) || len(regs) > 64 {
		return fmt.Errorf("unicorn write registers: %d registers, %d values (at most 64)", len(regs), len(vals))
	}
	if len(regs) == 0 {
		return nil
	}
	var cregs [64]C.int
	var cvals [64]C.uint64_t
	for i, r := range regs {
		cregs[i] = C.int(r)
		cvals[i] = C.uint64_t(vals[i])
	}
	return check("write registers", C.hv_reg_write_batch(e.h, &cregs[0], &cvals[0], C.int(len(regs))))
}

// RegReadBytes reads a wide register (XMM: 16 bytes, ST: 10 bytes) into buf,
// which must be at least 16 bytes long.
func (e *Engine) RegReadBytes(reg Reg, buf []byte) error {
	if len(buf) < 16 {
		return fmt.Errorf("unicorn read register %d: buffer of %d bytes, need 16", reg, len(buf))
	}
	var tmp [32]byte
	if err := checkAt("read register", uint64(reg), C.uc_reg_read(e.h, C.int(reg), unsafe.Pointer(&tmp[0]))); err != nil {
		return err
	}
	copy(buf, tmp[:16])
	return nil
}

// RegReadWideBatch reads wide registers (XMM: 16 bytes, ST: 10 bytes
// zero-padded) into out, 16 bytes per register, in one call.
func (e *Engine) RegReadWideBatch(regs []Reg, out []byte) error {
	if len(out) < 16*len(regs) || len(regs) > 64 {
		return fmt.Errorf("unicorn read registers: %d registers need %d bytes, have %d (at most 64 registers)", len(regs), 16*len(regs), len(out))
	}
	if len(regs) == 0 {
		return nil
	}
	var cregs [64]C.int
	for i, r := range regs {
		cregs[i] = C.int(r)
	}
	return check("read wide registers", C.hv_read_wide(e.h, &cregs[0], (*C.uint8_t)(unsafe.Pointer(&out[0])), C.int(len(regs))))
}

// RegWriteBytes writes a wide register from buf (at least 16 bytes).
func (e *Engine) RegWriteBytes(reg Reg, buf []byte) error {
	if len(buf) < 16 {
		return fmt.Errorf("unicorn write register %d: buffer of %d bytes, need 16", reg, len(buf))
	}
	var tmp [32]byte
	copy(tmp[:], buf[:16])
	return checkAt("write register", uint64(reg), C.uc_reg_write(e.h, C.int(reg), unsafe.Pointer(&tmp[0])))
}

// MMR is an x86 memory-management register (GDTR, IDTR, LDTR, TR).
type MMR struct {
	Selector uint16
	Base     uint64
	Limit    uint32
	Flags    uint32
}

// StateRead names a whole CPU state read (ReadState): scalar registers,
// descriptor-table registers, MSRs and wide registers (16 bytes each).
type StateRead struct {
	Regs []Reg
	MMRs []Reg
	MSRs []uint32
	Wide []Reg
}

// State is what a StateReader reads, in StateRead's order.
type State struct {
	Vals []uint64
	MMRs []MMR
	MSRs []uint64
	Wide []byte
}

// StateReader reads one StateRead in a single call into C, through
// buffers in C memory made once (cgo forbids handing C Go memory that
// holds pointers, and the request holds them all). The engine frees it.
type StateReader struct {
	e   *Engine
	req *C.hv_state_req
	q   StateRead
}

// NewStateReader prepares q for repeated reads.
func (e *Engine) NewStateReader(q StateRead) (*StateReader, error) {
	if len(q.Regs) > 64 || len(q.Wide) > 64 || len(q.Regs) == 0 || len(q.MMRs) == 0 || len(q.MSRs) == 0 || len(q.Wide) == 0 {
		return nil, fmt.Errorf("unicorn read state: %d registers, %d MMRs, %d MSRs, %d wide (1 to 64 of each)", len(q.Regs), len(q.MMRs), len(q.MSRs), len(q.Wide))
	}
	n := len(q.MMRs)
	size := C.size_t(C.sizeof_hv_state_req) + C.size_t(8*len(q.Regs)+(8+4+2+4)*n+8*len(q.MSRs)+16*len(q.Wide)+
		4*(len(q.Regs)+n+len(q.Wide))+4*len(q.MSRs)+64)
	buf := C.calloc(1, size)
	if buf == nil {
		return nil, fmt.Errorf("unicorn read state: out of memory")
	}
	e.owned = append(e.owned, buf)
	off := 0
	take := func(size int) unsafe.Pointer { at := unsafe.Add(buf, off); off += (size + 7) &^ 7; return at }
	req := (*C.hv_state_req)(take(int(C.sizeof_hv_state_req)))
	req.nregs, req.nmmrs, req.nmsrs, req.nwide = C.int(len(q.Regs)), C.int(n), C.int(len(q.MSRs)), C.int(len(q.Wide))
	req.vals = (*C.uint64_t)(take(8 * len(q.Regs)))
	req.mmr_base = (*C.uint64_t)(take(8 * n))
	req.msr_vals = (*C.uint64_t)(take(8 * len(q.MSRs)))
	req.wide_out = (*C.uint8_t)(take(16 * len(q.Wide)))
	req.mmr_limit = (*C.uint32_t)(take(4 * n))
	req.mmr_flags = (*C.uint32_t)(take(4 * n))
	req.regs = (*C.int)(take(4 * len(q.Regs)))
	req.mmrs = (*C.int)(take(4 * n))
	req.wide = (*C.int)(take(4 * len(q.Wide)))
	req.msrs = (*C.uint32_t)(take(4 * len(q.MSRs)))
	req.mmr_sel = (*C.uint16_t)(take(2 * n))
	for i, r := range q.Regs {
		unsafe.Slice(req.regs, len(q.Regs))[i] = C.int(r)
	}
	for i, r := range q.MMRs {
		unsafe.Slice(req.mmrs, n)[i] = C.int(r)
	}
	for i, r := range q.Wide {
		unsafe.Slice(req.wide, len(q.Wide))[i] = C.int(r)
	}
	for i, id := range q.MSRs {
		unsafe.Slice(req.msrs, len(q.MSRs))[i] = C.uint32_t(id)
	}
	return &StateReader{e: e, req: req, q: q}, nil
}

// Read reads the state into out, reusing its slices.
func (r *StateReader) Read(out *State) error {
	req := r.req
	if err := C.hv_read_state(r.e.h, req); err != C.UC_ERR_OK {
		return checkAt("read state", uint64(req.err_at), err)
	}
	n := len(r.q.MMRs)
	out.Vals = out.Vals[:0]
	for _, v := range unsafe.Slice(req.vals, len(r.q.Regs)) {
		out.Vals = append(out.Vals, uint64(v))
	}
	out.MMRs = out.MMRs[:0]
	base, limit, sel, flags := unsafe.Slice(req.mmr_base, n), unsafe.Slice(req.mmr_limit, n), unsafe.Slice(req.mmr_sel, n), unsafe.Slice(req.mmr_flags, n)
	for i := range n {
		out.MMRs = append(out.MMRs, MMR{Selector: uint16(sel[i]), Base: uint64(base[i]), Limit: uint32(limit[i]), Flags: uint32(flags[i])})
	}
	out.MSRs = out.MSRs[:0]
	for _, v := range unsafe.Slice(req.msr_vals, len(r.q.MSRs)) {
		out.MSRs = append(out.MSRs, uint64(v))
	}
	out.Wide = append(out.Wide[:0], unsafe.Slice((*byte)(unsafe.Pointer(req.wide_out)), 16*len(r.q.Wide))...)
	return nil
}

// ReadMMR reads GDTR, IDTR, LDTR or TR.
func (e *Engine) ReadMMR(reg Reg) (MMR, error) {
	var base C.uint64_t
	var limit, flags C.uint32_t
	var sel C.uint16_t
	err := checkAt("read register", uint64(reg), C.hv_mmr_read(e.h, C.int(reg), &base, &limit, &sel, &flags))
	return MMR{Selector: uint16(sel), Base: uint64(base), Limit: uint32(limit), Flags: uint32(flags)}, err
}

// WriteMMR writes GDTR, IDTR, LDTR or TR.
func (e *Engine) WriteMMR(reg Reg, m MMR) error {
	return checkAt("write register", uint64(reg),
		C.hv_mmr_write(e.h, C.int(reg), C.uint64_t(m.Base), C.uint32_t(m.Limit), C.uint16_t(m.Selector), C.uint32_t(m.Flags)))
}

// ReadMSR reads a model-specific register.
func (e *Engine) ReadMSR(id uint32) (uint64, error) {
	var v C.uint64_t
	err := checkAt("read MSR", uint64(id), C.hv_msr_read(e.h, C.uint32_t(id), &v))
	return uint64(v), err
}

// WriteMSR writes a model-specific register.
func (e *Engine) WriteMSR(id uint32, v uint64) error {
	return checkAt("write MSR", uint64(id), C.hv_msr_write(e.h, C.uint32_t(id), C.uint64_t(v)))
}

// Start runs from begin until the guest reaches until, Stop is called, a
// hook stops it, HLT, or an unhandled fault. timeoutMicros and count of 0
// mean no limit; a non-zero count makes Unicorn install its own
// per-instruction counter (slow; used only as a benchmark baseline).
func (e *Engine) Start(begin, until, timeoutMicros uint64, count uint64) error {
	e.ctx.stop_pending, e.ctx.stop_taken = 0, 0
	if e.ctx.cpu_state == nil {
		C.hv_bind_cpu(e.h, e.ctx)
	}
	err := C.uc_emu_start(e.h, C.uint64_t(begin), C.uint64_t(until), C.uint64_t(timeoutMicros), C.size_t(count))
	if e.ctx.stop_taken != 0 && err == C.UC_ERR_EXCEPTION {
		// The refused fill of a precise stop, not a fault.
		err = C.UC_ERR_OK
	}
	e.ctx.stop_pending = 0
	return check("emu_start", err)
}

// Stop asks a running engine to stop at the next block boundary. Asked
// for inside an instruction hook, Unicorn may instead leave the block in
// the middle and rewind to its start, so that instructions before the
// hook's run again when the engine resumes: hooks use StopPrecise.
func (e *Engine) Stop() error { return check("emu_stop", C.uc_emu_stop(e.h)) }

// StopPrecise stops a running engine from inside a hook without any part
// of a block running twice: before the first memory access after the
// current instruction, or at the next block, whichever comes first. The
// CPU state is then exactly that of an instruction boundary. It needs the
// software TLB (without it, it is Stop).
func (e *Engine) StopPrecise() { C.hv_stop_precise(e.h, e.ctx) }

// Halted reports whether the last run executed a HLT (and so ended with
// it).
func (e *Engine) Halted() bool { return C.hv_halted(e.ctx) == 1 }

// Context is a saved CPU state, valid only for the engine that made it.
type Context struct{ c *C.uc_context }

// SaveContext saves the CPU state.
func (e *Engine) SaveContext() (*Context, error) {
	var c *C.uc_context
	if err := check("context_alloc", C.uc_context_alloc(e.h, &c)); err != nil {
		return nil, err
	}
	if err := check("context_save", C.uc_context_save(e.h, c)); err != nil {
		C.uc_context_free(c)
		return nil, err
	}
	return &Context{c: c}, nil
}

// RestoreContext restores a state saved by SaveContext.
func (e *Engine) RestoreContext(c *Context) error {
	return check("context_restore", C.uc_context_restore(e.h, c.c))
}

// Free releases the context.
func (c *Context) Free() {
	if c.c != nil {
		C.uc_context_free(c.c)
		c.c = nil
	}
}
