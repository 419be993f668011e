package vm

import (
	"testing"

	"hvft/vm/tlb"
)

// TestBootFPUState: a board guest and a Linux program both start with the
// x87 and SSE control registers of a freshly initialised FPU, as the
// engine reports them (the programs' own view is checked against a native
// process in cmd/hvft).
func TestBootFPUState(t *testing.T) {
	want := map[string]uint64{"fpcw": 0x037F, "fpsw": 0, "fptag": 0xFFFF, "mxcsr": 0x1F80}
	check := func(what string, m *Machine) {
		t.Helper()
		regs, err := m.Registers()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		seen := 0
		for _, r := range regs {
			if w, ok := want[r.Name]; ok {
				seen++
				if r.Value != w {
					t.Errorf("%s: %s = %#x at entry, want %#x", what, r.Name, r.Value, w)
				}
			}
		}
		if seen != len(want) {
			t.Fatalf("%s: %d of the %d x87/SSE control registers listed", what, seen, len(want))
		}
	}

	live, err := NewLive(LiveConfig{CPU: sharedCPU(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { live.Close() })
	board, err := New(Config{TLB: tlbConfig(64<<10, 32, tlb.Random, 1), Args: []string{"hello"}}, image(t, "hello"), live, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(board.Close)
	check("board guest", board)

	var out consoleBuffer
	check("Linux program", newLinuxMachine(t, linuxProgram(t, "probe"), nil, &out))
}
