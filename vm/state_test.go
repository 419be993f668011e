package vm

import (
	"bytes"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"

	"hvft/vm/tlb"
	"hvft/vm/uc"
)

// notState lists Unicorn's x86 registers that the state leaves out, each
// with the reason; every other register Unicorn has must be in the state.
var notState = []struct {
	pattern, why string
}{
	{`^(INVALID|ENDING)$`, "not a register"},
	{`^([ER]?[ABCD]X|[ABCD][HL]|[ER]?(SI|DI|BP|SP)|(SI|DI|BP|SP)L|R(8|9|1[0-5])[DWB])$`, "a narrower view of a general register in the state"},
	{`^(E?IP)$`, "a narrower view of RIP"},
	{`^E?FLAGS$`, "a narrower view of RFLAGS"},
	{`^(CR1|DR4|DR5)$`, "reserved, or an alias of DR6/DR7"},
	{`^CR8$`, "the task priority: reads as 0 on a board without an APIC, so no guest can set it"},
	{`^FP[0-7]$`, "the same registers as ST0-ST7"},
	{`^MM[0-7]$`, "the MMX view of ST0-ST7 (their low 64 bits)"},
	{`^(XMM(1[6-9]|2[0-9]|3[01])|YMM[0-9]+|ZMM[0-9]+|K[0-7])$`, "AVX and AVX-512 state: masked in CPUID (docs/board.md)"},
	{`^MSR$`, "the MSR access path; the MSRs in the state are listed in stateMSRs"},
}

// TestStateCoversEveryRegister enumerates every x86 register in Unicorn's
// header and requires each to be in the hashed and snapshotted state, or
// excluded above with a reason.
func TestStateCoversEveryRegister(t *testing.T) {
	hdr, err := os.ReadFile("/usr/include/unicorn/x86.h")
	if err != nil {
		t.Fatalf("reading Unicorn's x86 header: %v", err)
	}
	in := map[string]bool{}
	for _, r := range scalarRegs {
		in[strings.ToUpper(r.name)] = true
	}
	for _, r := range stateMMRs {
		in[strings.ToUpper(r.name)] = true
	}
	for i := 0; i < 8; i++ {
		in[fmt.Sprintf("ST%d", i)] = true
	}
	for i := 0; i < 16; i++ {
		in[fmt.Sprintf("XMM%d", i)] = true
	}
	names := regexp.MustCompile(`\bUC_X86_REG_([A-Z0-9_]+)\b`).FindAllStringSubmatch(string(hdr), -1)
	if len(names) < 200 {
		t.Fatalf("found %d register names in the header; the parse is wrong", len(names))
	}
	seen := map[string]bool{}
	for _, n := range names {
		name := n[1]
		if seen[name] {
			continue
		}
		seen[name] = true
		if in[name] {
			continue
		}
		excluded := false
		for _, x := range notState {
			if regexp.MustCompile(x.pattern).MatchString(name) {
				excluded = true
				break
			}
		}
		if !excluded {
			t.Errorf("register %s is neither in the state nor excluded with a reason", name)
		}
	}
	for _, want := range []string{"RIP", "DR7", "GDTR", "TR", "MXCSR", "FIP", "XMM15", "ST7", "FS_BASE"} {
		if !in[want] {
			t.Errorf("%s is not in the state", want)
		}
	}
}

// settable are registers a test may set to an arbitrary value without
// changing the machine's mode.
var settable = []uc.Reg{uc.RAX, uc.RBX, uc.R9, uc.R15, uc.DR0, uc.DR1, uc.DR2, uc.DR3, uc.FSBase, uc.GSBase, uc.FIP, uc.FDP, uc.CR2}

var settableMSRs = []uint32{msrSTAR, msrLSTAR, msrCSTAR, msrFMASK, msrKernelGSBase, msrTSCAux, msrSysenterCS, msrSysenterESP, msrSysenterEIP}

// TestStateRoundTrips: every settable register and MSR changes the state
// hash, and a snapshot restored into a machine with another TLB carries it
// (registers, MSRs, XMM, the interrupt shadow) to the same hash.
func TestStateRoundTrips(t *testing.T) {
	newMachine := func(tc tlb.Config) *Machine {
		live, err := NewLive(LiveConfig{CPU: sharedCPU(t)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { live.Close() })
		m, err := New(Config{TLB: tc, Args: []string{"hello"}}, image(t, "hello"), live, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(m.Close)
		return m
	}
	a := newMachine(tlbConfig(64<<10, 32, tlb.Random, 1))
	changes := 0
	err := a.call(func() error {
		check := func(what string, set func(v uint64) error, get func() (uint64, error)) {
			old, err := get()
			if err != nil {
				t.Errorf("%s: %v", what, err)
				return
			}
			before, _ := a.hash()
			if err := set(old ^ 0x1248); err != nil {
				t.Errorf("%s: %v", what, err)
				return
			}
			if after, _ := a.hash(); after == before {
				t.Errorf("changing %s does not change the state hash", what)
			}
			changes++
		}
		for _, r := range settable {
			check("register "+regName(r), func(v uint64) error { return a.eng.RegWrite(r, v) }, func() (uint64, error) { return a.eng.RegRead(r) })
		}
		for _, id := range settableMSRs {
			check("MSR "+msrName(id), func(v uint64) error { return a.eng.WriteMSR(id, v) }, func() (uint64, error) { return a.eng.ReadMSR(id) })
		}
		if err := a.eng.RegWriteBytes(uc.XMM(13), []byte("xmm13 state 0123")); err != nil {
			return err
		}
		return a.eng.SetInterruptShadow(true)
	})
	if err != nil {
		t.Fatal(err)
	}
	want, _ := a.Hash()
	var snap bytes.Buffer
	if err := a.Snapshot(&snap); err != nil {
		t.Fatal(err)
	}
	b := newMachine(tlbConfig(4<<10, 4, tlb.FIFO, 9))
	if err := b.Restore(bytes.NewReader(snap.Bytes())); err != nil {
		t.Fatal(err)
	}
	if got, _ := b.Hash(); got != want {
		t.Fatalf("restored hash %v, want %v", got, want)
	}
	ra, _ := a.Registers()
	rb, _ := b.Registers()
	for i := range ra {
		if ra[i] != rb[i] {
			t.Errorf("%s: restored %#x, want %#x", ra[i].Name, rb[i].Value, ra[i].Value)
		}
	}
	b.call(func() error {
		if on, err := b.eng.InterruptShadow(); err != nil || !on {
			t.Errorf("interrupt shadow restored as %v, %v", on, err)
		}
		return nil
	})
	if changes != len(settable)+len(settableMSRs) {
		t.Fatalf("checked %d registers", changes)
	}
}

func regName(r uc.Reg) string {
	for _, s := range scalarRegs {
		if s.reg == r {
			return s.name
		}
	}
	return "?"
}

func msrName(id uint32) string {
	for _, s := range stateMSRs {
		if s.id == id {
			return s.name
		}
	}
	return "?"
}
