package uc

import "testing"

// TestLibraryRerunsABlockStoppedInAHook shows, on the linked libunicorn
// with no hvft hooks, that uc_emu_stop inside an OUT hook, followed in
// the block by a load, reruns the block from its start when the engine
// resumes (the duplicated byte), and that the hypervisor's precise stop
// does not.
func TestLibraryRerunsABlockStoppedInAHook(t *testing.T) {
	const want = "abcdefghij"
	plain, err := ProbeStopInHook(false)
	if err != nil {
		t.Fatal(err)
	}
	if plain == want {
		t.Logf("this libunicorn no longer reruns a block stopped in a hook (printed %q)", plain)
	} else {
		t.Logf("uc_emu_stop in the OUT hook: printed %q", plain)
	}
	precise, err := ProbeStopInHook(true)
	if err != nil {
		t.Fatal(err)
	}
	if precise != want {
		t.Fatalf("precise stop: printed %q, want %q", precise, want)
	}
}

// TestEngineRunsNoStaleCode: the library alone keeps stale translations
// when a counter sits beside patched code (most of 100 calls run the
// stub's previous code); the same program on an Engine with the software
// TLB runs none, under every TLB shape, since a store into translated
// code switches the engine to precise invalidation.
func TestEngineRunsNoStaleCode(t *testing.T) {
	stale, err := ProbeStaleCode()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("libunicorn alone: %d of 100 calls ran stale code", stale)
	loop, stub := StaleCodeProgram()
	for _, tlb := range []SoftTLB{
		{RAMSize: testRAM, EntrySize: 1 << 12, Entries: 4},
		{RAMSize: testRAM, EntrySize: 1 << 16, Entries: 16, Policy: PolicyLRU},
		{RAMSize: testRAM, EntrySize: 1 << 20, Entries: 4, Policy: PolicyFIFO},
	} {
		e, r := newEngineTLB(t, loop, tlb)
		copy(r.ram[0x1800:], stub)
		if err := e.RegWrite(RSP, 0x1f00); err != nil {
			t.Fatal(err)
		}
		if err := e.Start(0x1000, never, 0, 0); err != nil {
			t.Fatal(err)
		}
		if !e.Halted() {
			t.Fatalf("TLB %+v: the loop did not reach its HLT", tlb)
		}
		r8, _ := e.RegRead(R8)
		if r8 != 0 {
			t.Fatalf("TLB %+v: %d of 100 calls ran stale code", tlb, r8)
		}
		if !e.TLBStats().PreciseCode {
			t.Fatalf("TLB %+v: a store into translated code did not switch to precise invalidation", tlb)
		}
	}
}
