package uc

import (
	"errors"
	"runtime"
	"strings"
	"testing"
	"unsafe"
)

// recorder is a Handler that maps 64 KiB pages of ram on demand and
// remembers what it saw.
type recorder struct {
	e        *Engine
	ram      []byte
	inRIPs   []uint64
	outs     []uint32
	intrs    []uint32
	invalid  int
	redirect uint64
	mapped   []uint64
}

func (r *recorder) In(port uint32, size int) uint32 {
	rip, _ := r.e.RegRead(RIP)
	r.inRIPs = append(r.inRIPs, rip)
	return 0x2a
}
func (r *recorder) Out(port uint32, size int, value uint32) { r.outs = append(r.outs, value) }
func (r *recorder) CPUID() bool {
	r.e.RegWriteBatch([]Reg{RAX, RBX, RCX, RDX}, []uint64{1, 2, 3, 4})
	return true
}
func (r *recorder) Interrupt(intno uint32) {
	r.intrs = append(r.intrs, intno)
	if r.redirect != 0 {
		r.e.RegWrite(RIP, r.redirect)
	}
}
func (r *recorder) InvalidInstruction() bool {
	r.invalid++
	if r.redirect != 0 {
		r.e.RegWrite(RIP, r.redirect)
		return true
	}
	return false
}
func (r *recorder) Mem(a Access, addr uint64, size int, value int64) bool {
	page := addr &^ 0xffff
	if page >= uint64(len(r.ram)) {
		return false
	}
	r.mapped = append(r.mapped, page)
	return r.e.MapPtr(page, 0x10000, ProtAll, unsafe.Pointer(&r.ram[page])) == nil
}

func newEngine(t *testing.T, code []byte) (*Engine, *recorder) {
	t.Helper()
	runtime.LockOSThread()
	t.Cleanup(runtime.UnlockOSThread)
	e, err := Open()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	r := &recorder{e: e, ram: make([]byte, 1<<20)}
	copy(r.ram[0x1000:], code)
	if err := e.Hooks(r); err != nil {
		t.Fatal(err)
	}
	return e, r
}

const never = ^uint64(0)

// loop100 counts ECX down from 100, reads a port, halts.
var loop100 = []byte{
	0xb9, 0x64, 0, 0, 0, // 1000: mov ecx,100
	0xff, 0xc9, // 1005: dec ecx
	0x75, 0xfc, // 1007: jnz 1005
	0x90,       // 1009: nop
	0xe4, 0x10, // 100a: in al,0x10
	0x0f, 0xa2, // 100c: cpuid
	0xf4, // 100e: hlt
}

// TestBlockClockStopsAtLimit: the C block hook stops the engine at the
// block whose entry reaches the limit, before that block runs.
func TestBlockClockStopsAtLimit(t *testing.T) {
	e, r := newEngine(t, loop100)
	e.SetBlockLimit(50)
	if err := e.Start(0x1000, never, 0, 0); err != nil {
		t.Fatal(err)
	}
	rip, _ := e.RegRead(RIP)
	rcx, _ := e.RegRead(RCX)
	if !e.BlockLimitHit() || e.Blocks() != 50 || rip != 0x1005 || rcx != 51 {
		t.Fatalf("stopped with hit=%v blocks=%d rip=%#x rcx=%d; want hit, 50 blocks, rip 0x1005, rcx 51", e.BlockLimitHit(), e.Blocks(), rip, rcx)
	}
	e.SetBlockLimit(0)
	if err := e.Start(rip, never, 0, 0); err != nil {
		t.Fatal(err)
	}
	rip, _ = e.RegRead(RIP)
	if e.BlockLimitHit() || rip != 0x100f {
		t.Fatalf("run to HLT ended at %#x (hit %v), want 0x100f, just past the HLT", rip, e.BlockLimitHit())
	}
	if len(r.inRIPs) != 1 || r.inRIPs[0] != 0x1009 {
		t.Errorf("IN hook saw RIP %#x, want the block start 0x1009", r.inRIPs)
	}
	vals := make([]uint64, 4)
	e.RegReadBatch([]Reg{RAX, RBX, RCX, RDX}, vals)
	if vals[0] != 1 || vals[1] != 2 || vals[2] != 3 || vals[3] != 4 {
		t.Errorf("CPUID hook's answer not kept: %v", vals)
	}
	if len(r.mapped) != 1 || r.mapped[0] != 0 {
		t.Errorf("mapped %#x, want the code page once", r.mapped)
	}
}

// TestInvalidInstructionAndException: #UD reaches the invalid-instruction
// hook (Unicorn does not raise it as an interrupt) and #DE the interrupt
// hook, both with RIP at the faulting instruction; redirecting RIP works.
func TestInvalidInstructionAndException(t *testing.T) {
	code := []byte{
		0x0f, 0x0b, // 1000: ud2
		0xf4,       // 1002: hlt
		0x31, 0xc9, // 1003: xor ecx,ecx
		0xf7, 0xf1, // 1005: div ecx
		0xf4, // 1007: hlt
		0x90, // 1008: nop
		0xf4, // 1009: hlt
	}
	e, r := newEngine(t, code)
	err := e.Start(0x1000, never, 0, 0)
	var ue *Error
	if !errors.As(err, &ue) || ue.Code != ErrInsnInvalid || !strings.Contains(err.Error(), "Invalid instruction") {
		t.Fatalf("ud2 without a handler: %v", err)
	}
	r.redirect = 0x1008
	if err := e.Start(0x1000, never, 0, 0); err != nil {
		t.Fatal(err)
	}
	if rip, _ := e.RegRead(RIP); rip != 0x1008 {
		t.Fatalf("after redirected #UD, RIP %#x: Unicorn should stop at the new RIP", rip)
	}
	if err := e.Start(0x1003, never, 0, 0); err != nil {
		t.Fatal(err)
	}
	if rip, _ := e.RegRead(RIP); rip != 0x100a || len(r.intrs) != 1 || r.intrs[0] != 0 {
		t.Fatalf("after #DE: RIP %#x, interrupts %v; want 0x100a and [0]", rip, r.intrs)
	}
	if r.invalid != 2 {
		t.Errorf("invalid-instruction hook ran %d times, want 2", r.invalid)
	}
}

// TestUnmappedAccessIsRetried: a data access to an unmapped page reaches
// the memory hook, which maps it, and the access completes in place.
func TestUnmappedAccessIsRetried(t *testing.T) {
	code := []byte{0x48, 0x8b, 0x04, 0x25, 0x00, 0x00, 0x08, 0x00, 0xf4} // mov rax,[0x80000]; hlt
	e, r := newEngine(t, code)
	r.ram[0x80000] = 0x77
	if err := e.Start(0x1000, never, 0, 0); err != nil {
		t.Fatal(err)
	}
	if rax, _ := e.RegRead(RAX); rax != 0x77 {
		t.Fatalf("rax %#x, want 0x77 read through the page mapped by the hook", rax)
	}
	if err := e.Unmap(0x80000, 0x10000); err != nil {
		t.Fatal(err)
	}
	r.ram = r.ram[:0x80000] // the hook now refuses that page
	err := e.Start(0x1000, never, 0, 0)
	var ue *Error
	if !errors.As(err, &ue) || ue.Code != ErrReadUnmapped {
		t.Fatalf("refused access: %v, want UC_ERR_READ_UNMAPPED", err)
	}
}

func TestRegistersAndContext(t *testing.T) {
	e, _ := newEngine(t, []byte{0xf4})
	if err := e.WriteMMR(GDTR, MMR{Base: 0x2000, Limit: 0x17}); err != nil {
		t.Fatal(err)
	}
	if m, _ := e.ReadMMR(GDTR); m.Base != 0x2000 || m.Limit != 0x17 {
		t.Fatalf("GDTR %+v", m)
	}
	xmm := []byte("0123456789abcdef")
	if err := e.RegWriteBytes(XMM(9), xmm); err != nil {
		t.Fatal(err)
	}
	wide := make([]byte, 32)
	if err := e.RegReadWideBatch([]Reg{XMM(0), XMM(9)}, wide); err != nil || string(wide[16:]) != string(xmm) {
		t.Fatalf("XMM9 read back %q, %v", wide[16:], err)
	}
	e.RegWrite(RBX, 7)
	ctx, err := e.SaveContext()
	if err != nil {
		t.Fatal(err)
	}
	defer ctx.Free()
	e.RegWrite(RBX, 9)
	if err := e.RestoreContext(ctx); err != nil {
		t.Fatal(err)
	}
	if v, _ := e.RegRead(RBX); v != 7 {
		t.Fatalf("RBX %d after context restore, want 7", v)
	}
	if err := e.Unmap(0x40000000, 0x1000); err == nil {
		t.Error("unmapping what was never mapped succeeded")
	}
	if Version() == "" {
		t.Error("no version")
	}
}
