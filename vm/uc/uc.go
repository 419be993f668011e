// Package uc is hvft's own small cgo binding to Unicorn 2 (Debian's
// libunicorn-dev), limited to what the hypervisor needs on x86-64: memory
// mapping over a caller-owned backing store, register access, start/stop,
// context save/restore, and the hooks the hypervisor traps through.
//
// Hot paths stay in C: the block hook that drives the epoch clock never calls
// into Go. Go callbacks exist only for rare events (port I/O, CPUID,
// interrupts, unmapped or protected memory). An Engine is not safe for
// concurrent use, and every call on it must come from the goroutine that
// runs the emulation, locked to its OS thread (runtime.LockOSThread).
package uc

/*
#cgo LDFLAGS: -lunicorn
#include <stdlib.h>
#include <string.h>
#include <unicorn/unicorn.h>

// hv_ctx is shared by every hook of one engine. The block-clock fields are
// touched only from C on the per-block path.
typedef struct {
	uintptr_t handle;
	uint64_t blocks;
	uint64_t limit;
	uint64_t last_addr;
	uint32_t last_size;
	int limit_hit;
} hv_ctx;

extern uint32_t hvftGoIn(uintptr_t h, uint32_t port, int size);
extern void hvftGoOut(uintptr_t h, uint32_t port, int size, uint32_t value);
extern int hvftGoCPUID(uintptr_t h);
extern void hvftGoIntr(uintptr_t h, uint32_t intno);
extern int hvftGoInvalid(uintptr_t h);
extern int hvftGoMem(uintptr_t h, int type, uint64_t addr, int size, int64_t value);

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
	hvftGoIntr(((hv_ctx *)ud)->handle, intno);
}
static bool tr_invalid(uc_engine *uc, void *ud) {
	return hvftGoInvalid(((hv_ctx *)ud)->handle) != 0;
}
static bool tr_mem(uc_engine *uc, uc_mem_type type, uint64_t addr, int size, int64_t value, void *ud) {
	return hvftGoMem(((hv_ctx *)ud)->handle, (int)type, addr, size, value) != 0;
}

// hv_block is the epoch clock: it counts translation blocks entered and asks
// Unicorn to stop once the limit is reached. Unicorn lets the current block
// finish and stops before the next one, so the clock reads exactly the limit
// when the run ends there.
static void hv_block(uc_engine *uc, uint64_t addr, uint32_t size, void *ud) {
	hv_ctx *c = (hv_ctx *)ud;
	c->blocks++;
	c->last_addr = addr;
	c->last_size = size;
	if (c->blocks == c->limit) {
		c->limit_hit = 1;
		uc_emu_stop(uc);
	}
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
static uc_err hv_hook_intr(uc_engine *uc, uc_hook *h, hv_ctx *c) {
	return uc_hook_add(uc, h, UC_HOOK_INTR, (void *)tr_intr, c, 1, 0);
}
static uc_err hv_hook_invalid(uc_engine *uc, uc_hook *h, hv_ctx *c) {
	return uc_hook_add(uc, h, UC_HOOK_INSN_INVALID, (void *)tr_invalid, c, 1, 0);
}
static uc_err hv_hook_mem(uc_engine *uc, uc_hook *h, hv_ctx *c, int types) {
	return uc_hook_add(uc, h, types, (void *)tr_mem, c, 1, 0);
}
static uc_err hv_hook_block(uc_engine *uc, uc_hook *h, hv_ctx *c) {
	return uc_hook_add(uc, h, UC_HOOK_BLOCK, (void *)hv_block, c, 1, 0);
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
*/
import "C"

import (
	"fmt"
	"runtime/cgo"
	"unsafe"
)

// Error is a failed Unicorn call: the operation and Unicorn's own message.
type Error struct {
	Op   string
	Code int
	Msg  string
}

func (e *Error) Error() string { return fmt.Sprintf("unicorn %s: %s (code %d)", e.Op, e.Msg, e.Code) }

// Unicorn error codes the hypervisor distinguishes.
const (
	ErrReadUnmapped  = int(C.UC_ERR_READ_UNMAPPED)
	ErrWriteUnmapped = int(C.UC_ERR_WRITE_UNMAPPED)
	ErrFetchUnmapped = int(C.UC_ERR_FETCH_UNMAPPED)
	ErrInsnInvalid   = int(C.UC_ERR_INSN_INVALID)
	ErrException     = int(C.UC_ERR_EXCEPTION)
)

func check(op string, err C.uc_err) error {
	if err == C.UC_ERR_OK {
		return nil
	}
	return &Error{Op: op, Code: int(err), Msg: C.GoString(C.uc_strerror(err))}
}

// Version reports the linked Unicorn library's version as "major.minor".
func Version() string {
	var major, minor C.uint
	C.uc_version(&major, &minor)
	return fmt.Sprintf("%d.%d", major, minor)
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

// Access is the kind of a memory access reported to a memory hook.
type Access int

// Memory access kinds reported to Handler.Mem.
const (
	ReadUnmapped  Access = Access(C.UC_MEM_READ_UNMAPPED)
	WriteUnmapped Access = Access(C.UC_MEM_WRITE_UNMAPPED)
	FetchUnmapped Access = Access(C.UC_MEM_FETCH_UNMAPPED)
	ReadProt      Access = Access(C.UC_MEM_READ_PROT)
	WriteProt     Access = Access(C.UC_MEM_WRITE_PROT)
	FetchProt     Access = Access(C.UC_MEM_FETCH_PROT)
)

func (a Access) String() string {
	switch a {
	case ReadUnmapped:
		return "read of unmapped memory"
	case WriteUnmapped:
		return "write to unmapped memory"
	case FetchUnmapped:
		return "fetch from unmapped memory"
	case ReadProt:
		return "read of protected memory"
	case WriteProt:
		return "write to protected memory"
	case FetchProt:
		return "fetch from protected memory"
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
	// Interrupt receives a CPU exception or software interrupt.
	Interrupt(intno uint32)
	// InvalidInstruction receives an invalid opcode (Unicorn does not raise
	// #UD through Interrupt); it returns true to go on, typically after
	// redirecting RIP.
	InvalidInstruction() bool
	// Mem handles an access to unmapped or protected memory; it returns
	// true when the access should be retried.
	Mem(access Access, addr uint64, size int, value int64) bool
}

// Engine is one Unicorn x86-64 instance.
type Engine struct {
	h      *C.uc_engine
	ctx    *C.hv_ctx
	handle cgo.Handle
	hooks  []C.uc_hook
}

// Open creates an x86-64 engine with no hooks.
func Open() (*Engine, error) {
	var h *C.uc_engine
	if err := check("open", C.uc_open(C.UC_ARCH_X86, C.UC_MODE_64, &h)); err != nil {
		return nil, err
	}
	ctx := (*C.hv_ctx)(C.calloc(1, C.sizeof_hv_ctx))
	return &Engine{h: h, ctx: ctx}, nil
}

// Close releases the engine and its hooks.
func (e *Engine) Close() error {
	if e.h == nil {
		return nil
	}
	err := check("close", C.uc_close(e.h))
	e.h = nil
	C.free(unsafe.Pointer(e.ctx))
	e.ctx = nil
	if e.handle != 0 {
		e.handle.Delete()
		e.handle = 0
	}
	return err
}

// Hooks installs h for IN, OUT, CPUID, interrupts and the given unmapped or
// protected memory accesses (memTypes: any of the Hook* constants), and the
// C block hook that drives the block clock. It may be called once.
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
	memTypes := C.int(C.UC_HOOK_MEM_UNMAPPED | C.UC_HOOK_MEM_PROT)
	if err := add("hook memory faults", C.hv_hook_mem(e.h, &hk, e.ctx, memTypes)); err != nil {
		return err
	}
	return add("hook blocks", C.hv_hook_block(e.h, &hk, e.ctx))
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
	return check(fmt.Sprintf("map %#x+%#x", addr, size),
		C.uc_mem_map_ptr(e.h, C.uint64_t(addr), C.size_t(size), C.uint32_t(prot), ptr))
}

// Map maps [addr, addr+size) onto memory Unicorn allocates.
func (e *Engine) Map(addr, size uint64, prot Prot) error {
	return check(fmt.Sprintf("map %#x+%#x", addr, size),
		C.uc_mem_map(e.h, C.uint64_t(addr), C.size_t(size), C.uint32_t(prot)))
}

// Unmap removes [addr, addr+size) from the map.
func (e *Engine) Unmap(addr, size uint64) error {
	return check(fmt.Sprintf("unmap %#x+%#x", addr, size),
		C.uc_mem_unmap(e.h, C.uint64_t(addr), C.size_t(size)))
}

// Protect changes the permissions of a mapped range.
func (e *Engine) Protect(addr, size uint64, prot Prot) error {
	return check(fmt.Sprintf("protect %#x+%#x", addr, size),
		C.uc_mem_protect(e.h, C.uint64_t(addr), C.size_t(size), C.uint32_t(prot)))
}

// MemRead reads mapped guest memory into buf.
func (e *Engine) MemRead(addr uint64, buf []byte) error {
	if len(buf) == 0 {
		return nil
	}
	return check(fmt.Sprintf("read %#x+%d", addr, len(buf)),
		C.uc_mem_read(e.h, C.uint64_t(addr), unsafe.Pointer(&buf[0]), C.size_t(len(buf))))
}

// MemWrite writes data into mapped guest memory.
func (e *Engine) MemWrite(addr uint64, data []byte) error {
	if len(data) == 0 {
		return nil
	}
	return check(fmt.Sprintf("write %#x+%d", addr, len(data)),
		C.uc_mem_write(e.h, C.uint64_t(addr), unsafe.Pointer(&data[0]), C.size_t(len(data))))
}

// RegRead reads a register of at most 64 bits.
func (e *Engine) RegRead(reg Reg) (uint64, error) {
	var v C.uint64_t
	err := check(fmt.Sprintf("read register %d", reg), C.uc_reg_read(e.h, C.int(reg), unsafe.Pointer(&v)))
	return uint64(v), err
}

// RegWrite writes a register of at most 64 bits.
func (e *Engine) RegWrite(reg Reg, v uint64) error {
	cv := C.uint64_t(v)
	return check(fmt.Sprintf("write register %d", reg), C.uc_reg_write(e.h, C.int(reg), unsafe.Pointer(&cv)))
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
	if err := check(fmt.Sprintf("read register %d", reg), C.uc_reg_read(e.h, C.int(reg), unsafe.Pointer(&tmp[0]))); err != nil {
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
	return check(fmt.Sprintf("write register %d", reg), C.uc_reg_write(e.h, C.int(reg), unsafe.Pointer(&tmp[0])))
}

// MMR is an x86 memory-management register (GDTR, IDTR, LDTR, TR).
type MMR struct {
	Selector uint16
	Base     uint64
	Limit    uint32
	Flags    uint32
}

// ReadMMR reads GDTR, IDTR, LDTR or TR.
func (e *Engine) ReadMMR(reg Reg) (MMR, error) {
	var base C.uint64_t
	var limit, flags C.uint32_t
	var sel C.uint16_t
	err := check(fmt.Sprintf("read register %d", reg), C.hv_mmr_read(e.h, C.int(reg), &base, &limit, &sel, &flags))
	return MMR{Selector: uint16(sel), Base: uint64(base), Limit: uint32(limit), Flags: uint32(flags)}, err
}

// WriteMMR writes GDTR, IDTR, LDTR or TR.
func (e *Engine) WriteMMR(reg Reg, m MMR) error {
	return check(fmt.Sprintf("write register %d", reg),
		C.hv_mmr_write(e.h, C.int(reg), C.uint64_t(m.Base), C.uint32_t(m.Limit), C.uint16_t(m.Selector), C.uint32_t(m.Flags)))
}

// ReadMSR reads a model-specific register.
func (e *Engine) ReadMSR(id uint32) (uint64, error) {
	var v C.uint64_t
	err := check(fmt.Sprintf("read MSR %#x", id), C.hv_msr_read(e.h, C.uint32_t(id), &v))
	return uint64(v), err
}

// WriteMSR writes a model-specific register.
func (e *Engine) WriteMSR(id uint32, v uint64) error {
	return check(fmt.Sprintf("write MSR %#x", id), C.hv_msr_write(e.h, C.uint32_t(id), C.uint64_t(v)))
}

// Start runs from begin until the guest reaches until, Stop is called, a
// hook stops it, HLT, or an unhandled fault. timeoutMicros and count of 0
// mean no limit; a non-zero count makes Unicorn install its own
// per-instruction counter (slow; used only as a benchmark baseline).
func (e *Engine) Start(begin, until, timeoutMicros uint64, count uint64) error {
	return check("emu_start", C.uc_emu_start(e.h, C.uint64_t(begin), C.uint64_t(until), C.uint64_t(timeoutMicros), C.size_t(count)))
}

// Stop asks a running engine to stop at the next block boundary.
func (e *Engine) Stop() error { return check("emu_stop", C.uc_emu_stop(e.h)) }

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
