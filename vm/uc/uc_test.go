package uc

import (
	"bytes"
	"runtime"
	"slices"
	"syscall"
	"testing"
	"unsafe"
)

// recorder is a Handler over 1 MiB of RAM, all mapped, with the software
// TLB on; it remembers what it saw.
type recorder struct {
	e        *Engine
	ram      []byte
	inRIPs   []uint64
	outs     []uint32
	intrs    []uint32
	redirect uint64
	// onInterrupt, when set, runs in Interrupt in place of the redirect.
	onInterrupt func()
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
	if r.onInterrupt != nil {
		r.onInterrupt()
		return
	}
	if r.redirect != 0 {
		r.e.RegWrite(RIP, r.redirect)
	}
}

const testRAM = 1 << 20

func newEngineTLB(t *testing.T, code []byte, tlb SoftTLB) (*Engine, *recorder) {
	t.Helper()
	runtime.LockOSThread()
	t.Cleanup(runtime.UnlockOSThread)
	e, err := Open()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	ram, err := syscall.Mmap(-1, 0, testRAM, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Munmap(ram) })
	r := &recorder{e: e, ram: ram}
	copy(r.ram[0x1000:], code)
	if err := e.MapPtr(0, testRAM, ProtAll, unsafe.Pointer(&ram[0])); err != nil {
		t.Fatal(err)
	}
	if err := e.EnableSoftTLB(tlb); err != nil {
		t.Fatal(err)
	}
	if err := e.Hooks(r); err != nil {
		t.Fatal(err)
	}
	return e, r
}

func newEngine(t *testing.T, code []byte) (*Engine, *recorder) {
	return newEngineTLB(t, code, SoftTLB{RAMSize: testRAM, EntrySize: 1 << 16, Entries: 16})
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
// block past the limit, before it runs: exactly 50 blocks have run.
func TestBlockClockStopsAtLimit(t *testing.T) {
	e, r := newEngine(t, loop100)
	e.SetBlockLimit(50)
	if err := e.Start(0x1000, never, 0, 0); err != nil {
		t.Fatal(err)
	}
	rip, _ := e.RegRead(RIP)
	rcx, _ := e.RegRead(RCX)
	if !e.BlockLimitHit() || e.Blocks() != 50 || rip != 0x1005 || rcx != 50 {
		t.Fatalf("stopped with hit=%v blocks=%d rip=%#x rcx=%d; want hit, 50 blocks, rip 0x1005, rcx 50", e.BlockLimitHit(), e.Blocks(), rip, rcx)
	}
	// Resuming counts the stopped block once, when it runs.
	e.SetBlockLimit(51)
	if err := e.Start(rip, never, 0, 0); err != nil {
		t.Fatal(err)
	}
	if rcx, _ = e.RegRead(RCX); e.Blocks() != 51 || rcx != 49 {
		t.Fatalf("one block later: blocks=%d rcx=%d; want 51 and 49", e.Blocks(), rcx)
	}
	rip, _ = e.RegRead(RIP)
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
}

// TestExceptionsReachTheInterruptHook: #UD and #DE both reach Interrupt
// with RIP at the faulting instruction, and redirecting RIP works. A second
// #DE arrives as #DE: the engine clears Unicorn's exception-in-flight state
// after each delivery (without that, x86's double-fault rule turns it into
// #DF).
func TestExceptionsReachTheInterruptHook(t *testing.T) {
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
	r.redirect = 0x1008
	if err := e.Start(0x1000, never, 0, 0); err != nil {
		t.Fatal(err)
	}
	if rip, _ := e.RegRead(RIP); rip != 0x100a || len(r.intrs) != 1 || r.intrs[0] != 6 {
		t.Fatalf("after redirected #UD: RIP %#x, interrupts %v; want 0x100a and [6]", rip, r.intrs)
	}
	for i := 0; i < 3; i++ {
		if err := e.Start(0x1003, never, 0, 0); err != nil {
			t.Fatal(err)
		}
	}
	if rip, _ := e.RegRead(RIP); rip != 0x100a || len(r.intrs) != 4 || r.intrs[1] != 0 || r.intrs[2] != 0 || r.intrs[3] != 0 {
		t.Fatalf("after three #DE: RIP %#x, interrupts %v; want 0x100a and [6 0 0 0]", rip, r.intrs)
	}
}

// TestInt1ArrivesAsUD pins what the machine's INT1 correction rests on:
// Unicorn 2.1 reports INT1 (f1), which x86-64 raises as a #DB trap, as #UD
// with RIP at the byte. Should a later Unicorn raise #DB itself, vm's
// int1At must go.
func TestInt1ArrivesAsUD(t *testing.T) {
	code := []byte{
		0x90, // 1000: nop
		0xf1, // 1001: int1
		0xf4, // 1002: hlt
		0xf4, // 1003: hlt
	}
	e, r := newEngine(t, code)
	var at []uint64
	r.onInterrupt = func() {
		rip, _ := e.RegRead(RIP)
		at = append(at, rip)
		e.RegWrite(RIP, 0x1003)
	}
	if err := e.Start(0x1000, never, 0, 0); err != nil {
		t.Fatal(err)
	}
	if len(r.intrs) != 1 || r.intrs[0] != 6 || at[0] != 0x1001 {
		t.Fatalf("INT1 reached the hook as %v at RIP %#x; want [6] at 0x1001", r.intrs, at)
	}
}

// TestFillOutsideRAMIsRefused: an access the fill hook cannot translate
// stops the run, and the engine says where.
func TestFillOutsideRAMIsRefused(t *testing.T) {
	code := []byte{0x48, 0x8b, 0x04, 0x25, 0x00, 0x00, 0x20, 0x00, 0xf4} // mov rax,[0x200000]; hlt
	e, _ := newEngine(t, code)
	if err := e.Start(0x1000, never, 0, 0); err == nil {
		t.Fatal("a read beyond RAM completed")
	}
	addr, access, ok := e.FillFault()
	if !ok || addr != 0x200000 || access != Read {
		t.Fatalf("fill fault %#x %v %v; want a read at 0x200000", addr, access, ok)
	}
}

// TestSelfModifyingCode: a store into the next instruction of the running
// block is seen (RAM mapped once, fills from the hook).
func TestSelfModifyingCode(t *testing.T) {
	code := []byte{
		0xc6, 0x05, 0x01, 0x00, 0x00, 0x00, 0x07, // 1000: mov byte [rip+1], 7  (patches the imm8 below)
		0xb0, 0x01, // 1007: mov al, 1
		0xf4, // 1009: hlt
	}
	e, _ := newEngine(t, code)
	for i := 0; i < 2; i++ { // the second run finds the block translated
		if err := e.Start(0x1000, never, 0, 0); err != nil {
			t.Fatal(err)
		}
		if rax, _ := e.RegRead(RAX); rax&0xff != 7 {
			t.Fatalf("run %d: al=%d, want the patched 7", i, rax&0xff)
		}
	}
}

// TestHostWriteNeedsInvalidateCode: code the host rewrites behind the
// engine's back runs new once InvalidateCode covers it.
func TestHostWriteNeedsInvalidateCode(t *testing.T) {
	e, r := newEngine(t, []byte{0xb0, 0x01, 0xf4}) // mov al,1; hlt
	if err := e.Start(0x1000, never, 0, 0); err != nil {
		t.Fatal(err)
	}
	r.ram[0x1001] = 2
	if err := e.Start(0x1000, never, 0, 0); err != nil {
		t.Fatal(err)
	}
	rax, _ := e.RegRead(RAX)
	t.Logf("after a host write without invalidation: al=%d (Unicorn 2.1.1 runs the stale 1)", rax&0xff)
	if err := e.InvalidateCode(0x1000, 3); err != nil {
		t.Fatal(err)
	}
	if err := e.Start(0x1000, never, 0, 0); err != nil {
		t.Fatal(err)
	}
	if rax, _ := e.RegRead(RAX); rax&0xff != 2 {
		t.Fatalf("after InvalidateCode: al=%d, want 2", rax&0xff)
	}
}

// TestTakeWritten: written pages are reported, pages only read are not; a
// page kept writable is reported at every interval until a flush.
func TestTakeWritten(t *testing.T) {
	code := []byte{
		0xc6, 0x04, 0x25, 0x00, 0x00, 0x08, 0x00, 0x01, // 1000: mov byte [0x80000], 1
		0xc6, 0x04, 0x25, 0x10, 0x00, 0x09, 0x00, 0x01, // 1008: mov byte [0x90010], 1
		0x8a, 0x04, 0x25, 0x00, 0x00, 0x0a, 0x00, // 1010: mov al, [0xa0000]
		0xf4,                                     // 1017: hlt
		0x8a, 0x04, 0x25, 0x00, 0x00, 0x08, 0x00, // 1018: mov al, [0x80000]
		0xf4, // 101f: hlt
	}
	e, _ := newEngine(t, code)
	taken := func(keep int) map[uint64]bool {
		got := map[uint64]bool{}
		e.TakeWritten(keep, func(p uint64) { got[p] = true })
		return got
	}
	if err := e.Start(0x1000, never, 0, 0); err != nil {
		t.Fatal(err)
	}
	if got := taken(8); len(got) != 2 || !got[0x80000] || !got[0x90000] {
		t.Fatalf("written pages %v, want 0x80000 and 0x90000", got)
	}
	if got := taken(0); len(got) != 2 {
		t.Fatalf("pages still writable %v, want both again", got)
	}
	if err := e.Start(0x1018, never, 0, 0); err != nil {
		t.Fatal(err)
	}
	if got := taken(0); len(got) != 0 {
		t.Fatalf("after a flush and only reads, written pages %v, want none", got)
	}
}

// TestInterruptShadow: the block that ends with STI leaves the shadow on;
// the next one clears it.
func TestInterruptShadow(t *testing.T) {
	e, _ := newEngine(t, []byte{0xfb, 0x90, 0x90, 0xf4}) // sti; nop; nop; hlt
	e.SetBlockLimit(1)
	if err := e.Start(0x1000, never, 0, 0); err != nil {
		t.Fatal(err)
	}
	if on, err := e.InterruptShadow(); err != nil || !on {
		t.Fatalf("after the sti block: shadow %v, %v; want on", on, err)
	}
	rip, _ := e.RegRead(RIP)
	if rip != 0x1001 {
		t.Fatalf("stopped at %#x, want 0x1001 just past the sti", rip)
	}
	e.SetBlockLimit(2)
	if err := e.Start(rip, never, 0, 0); err != nil {
		t.Fatal(err)
	}
	if on, err := e.InterruptShadow(); err != nil || on {
		t.Fatalf("a block later: shadow %v, %v; want off", on, err)
	}
	if err := e.SetInterruptShadow(true); err != nil {
		t.Fatal(err)
	}
	if on, _ := e.InterruptShadow(); !on {
		t.Fatal("SetInterruptShadow(true) did not stick")
	}
}

// TestModelledTLBEvicts: a loop over more pages than the modelled TLB holds
// misses, evicts and flushes, and still computes right.
func TestModelledTLBEvicts(t *testing.T) {
	// rcx = 64; loop: add al, [rbx]; add rbx, 0x1000; and rbx, 0x7ffff; or rbx, 0x40000...; dec rcx; jnz
	code := []byte{
		0xb9, 0x40, 0x00, 0x00, 0x00, // 1000: mov ecx, 64
		0xbb, 0x00, 0x00, 0x04, 0x00, // 1005: mov ebx, 0x40000
		0x31, 0xc0, // 100a: xor eax, eax
		0x02, 0x03, // 100c: add al, [rbx]
		0x88, 0x43, 0x01, // 100e: mov [rbx+1], al
		0x48, 0x81, 0xc3, 0x00, 0x10, 0x00, 0x00, // 1011: add rbx, 0x1000
		0xff, 0xc9, // 1018: dec ecx
		0x75, 0xf0, // 101a: jnz 100c
		0xf4, // 101c: hlt
	}
	for _, pol := range []Policy{PolicyRandom, PolicyFIFO, PolicyLRU} {
		e, r := newEngineTLB(t, code, SoftTLB{RAMSize: testRAM, EntrySize: PageSize, Entries: 2, Policy: pol, Seed: 7})
		for i := 0; i < 64; i++ {
			r.ram[0x40000+i*0x1000] = 1
		}
		if err := e.Start(0x1000, never, 0, 0); err != nil {
			t.Fatal(err)
		}
		if rax, _ := e.RegRead(RAX); rax&0xff != 64 {
			t.Fatalf("policy %d: al=%d, want 64", pol, rax&0xff)
		}
		if r.ram[0x40000+63*0x1000+1] != 64 {
			t.Fatalf("policy %d: last store lost", pol)
		}
		st := e.TLBStats()
		if st.Misses < 64 || st.Evictions == 0 || st.Flushes+st.PageEvictions < st.Evictions || st.Fills < st.Misses {
			t.Fatalf("policy %d: stats %+v; want misses >= 64, evictions and flushes", pol, st)
		}
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
	if Version() == "" {
		t.Error("no version")
	}
}

// TestPageTableKeepsEveryMapping: the C page table (open addressing with
// backward-shift deletion) answers every lookup right through thousands
// of maps and unmaps in a scattered address space.
func TestPageTableKeepsEveryMapping(t *testing.T) {
	e, err := Open()
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	const ram = 16 << 20
	if err := e.Map(0, ram, ProtAll); err != nil {
		t.Fatal(err)
	}
	if err := e.EnableSoftTLB(SoftTLB{RAMSize: ram, EntrySize: PageSize, Entries: 16}); err != nil {
		t.Fatal(err)
	}
	if err := e.EnablePageTable(ram / PageSize); err != nil {
		t.Fatal(err)
	}
	want := map[uint64]uint64{}
	x := uint64(88172645463325252)
	next := func() uint64 { x ^= x << 13; x ^= x >> 7; x ^= x << 17; return x }
	for round := 0; round < 20000; round++ {
		// Addresses clustered as a process's are (a few regions), so that
		// runs of neighbouring hash slots form and deletions must shift.
		v := (0x400000 + (next()%4)<<36 + next()%2048*PageSize) &^ (PageSize - 1)
		if _, ok := want[v]; ok && next()%2 == 0 {
			e.UnmapPage(v)
			delete(want, v)
			continue
		}
		if len(want) >= ram/PageSize-1 {
			continue
		}
		p := next() % (ram / PageSize) * PageSize
		if err := e.MapPage(v, p, ProtRead|ProtWrite); err != nil {
			t.Fatal(err)
		}
		want[v] = p
	}
	for v, p := range want {
		got, prot, ok := e.Translate(v + 123)
		if !ok || got != p+123 || prot != ProtRead|ProtWrite {
			t.Fatalf("Translate(%#x) = %#x %v %v, want %#x", v+123, got, prot, ok, p+123)
		}
	}
	for i := 0; i < 1000; i++ {
		v := (0x400000 + (next()%4)<<36 + next()%2048*PageSize) &^ (PageSize - 1)
		if _, mapped := want[v]; !mapped {
			if _, _, ok := e.Translate(v); ok {
				t.Fatalf("Translate(%#x) found a page never mapped (or unmapped)", v)
			}
		}
	}
	if err := e.MapPage(0x1000, ram, ProtRead); err == nil {
		t.Fatal("a physical page past RAM was accepted")
	}
}

// TestEvictionDropsTheVictimsPages: a loop over three pages with a
// modelled TLB too small for them and the code page evicts again and
// again. Dropping only the victim's pages from Unicorn's TLB must leave
// the model seeing exactly the misses it sees when every eviction flushes
// all of it (for FIFO and random, whose choices do not depend on hits): a
// victim page still cached would be revisited without a miss.
func TestEvictionDropsTheVictimsPages(t *testing.T) {
	code := []byte{
		0xb9, 0x2c, 0x01, 0x00, 0x00, // 1000: mov ecx, 300
		0xbb, 0x00, 0x00, 0x04, 0x00, // 1005: mov ebx, 0x40000
		0x31, 0xc0, // 100a: xor eax, eax
		0x02, 0x03, // 100c: add al, [rbx]
		0x48, 0x81, 0xc3, 0x00, 0x10, 0x00, 0x00, // 100e: add rbx, 0x1000
		0x48, 0x81, 0xfb, 0x00, 0x30, 0x04, 0x00, // 1015: cmp rbx, 0x43000
		0x75, 0x05, // 101c: jne 1023
		0xbb, 0x00, 0x00, 0x04, 0x00, // 101e: mov ebx, 0x40000
		0xff, 0xc9, // 1023: dec ecx
		0x75, 0xe5, // 1025: jnz 100c
		0xf4, // 1027: hlt
	}
	for _, pol := range []Policy{PolicyFIFO, PolicyRandom} {
		var stats [2]TLBStats
		for i, whole := range []bool{false, true} {
			e, r := newEngineTLB(t, code, SoftTLB{RAMSize: testRAM, EntrySize: PageSize, Entries: 2, Policy: pol, Seed: 9, WholeFlushes: whole})
			r.ram[0x40000], r.ram[0x41000], r.ram[0x42000] = 1, 2, 3
			if err := e.Start(0x1000, never, 0, 0); err != nil {
				t.Fatal(err)
			}
			if rax, _ := e.RegRead(RAX); rax&0xff != 600%256 {
				t.Fatalf("policy %d, whole %v: al=%d, want %d", pol, whole, rax&0xff, 600%256)
			}
			stats[i] = e.TLBStats()
		}
		page, whole := stats[0], stats[1]
		t.Logf("policy %d: per-page %+v; whole %+v", pol, page, whole)
		if page.Misses != whole.Misses || page.Evictions != whole.Evictions || page.Evictions < 100 {
			t.Errorf("policy %d: %d misses and %d evictions dropping the victim's pages, %d and %d flushing all", pol,
				page.Misses, page.Evictions, whole.Misses, whole.Evictions)
		}
		if page.PageEvictions != page.Evictions || whole.PageEvictions != 0 || whole.Flushes < whole.Evictions {
			t.Errorf("policy %d: per-page evictions %d of %d; whole flushes %d", pol, page.PageEvictions, page.Evictions, whole.Flushes)
		}
		if page.Fills >= whole.Fills {
			t.Errorf("policy %d: %d fills dropping the victim's pages, %d flushing all: nothing saved", pol, page.Fills, whole.Fills)
		}
	}
}

// TestStateReaderMatchesSingleReads: the one-call state read returns what
// the register, MMR, MSR and wide reads return one by one.
func TestStateReaderMatchesSingleReads(t *testing.T) {
	e, _ := newEngine(t, []byte{0xf4})
	if err := e.RegWriteBatch([]Reg{RAX, R15, RFLAGS}, []uint64{0x1122334455667788, 0x99, 0x202}); err != nil {
		t.Fatal(err)
	}
	if err := e.WriteMMR(GDTR, MMR{Base: 0x2000, Limit: 0x17}); err != nil {
		t.Fatal(err)
	}
	if err := e.WriteMSR(0xC0000082, 0xffff800000001000); err != nil { // LSTAR
		t.Fatal(err)
	}
	q := StateRead{Regs: []Reg{RAX, R15, RFLAGS}, MMRs: []Reg{GDTR, IDTR}, MSRs: []uint32{0xC0000082, 0xC0000080}, Wide: []Reg{XMM(0), ST(1)}}
	r, err := e.NewStateReader(q)
	if err != nil {
		t.Fatal(err)
	}
	var got State
	for range 2 { // the reader is reused
		if err := r.Read(&got); err != nil {
			t.Fatal(err)
		}
	}
	vals := make([]uint64, len(q.Regs))
	if err := e.RegReadBatch(q.Regs, vals); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.Vals, vals) || got.Vals[0] != 0x1122334455667788 {
		t.Errorf("registers %x, one by one %x", got.Vals, vals)
	}
	for i, reg := range q.MMRs {
		if m, _ := e.ReadMMR(reg); got.MMRs[i] != m {
			t.Errorf("MMR %d: %+v, alone %+v", reg, got.MMRs[i], m)
		}
	}
	for i, id := range q.MSRs {
		if v, _ := e.ReadMSR(id); got.MSRs[i] != v {
			t.Errorf("MSR %#x: %#x, alone %#x", id, got.MSRs[i], v)
		}
	}
	wide := make([]byte, 16*len(q.Wide))
	if err := e.RegReadWideBatch(q.Wide, wide); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Wide, wide) {
		t.Errorf("wide registers differ")
	}
	if _, err := e.NewStateReader(StateRead{Regs: q.Regs}); err == nil {
		t.Error("a read naming no MMRs, MSRs or wide registers was accepted")
	}
}
