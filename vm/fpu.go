package vm

import (
	"fmt"

	"hvft/vm/uc"
)

// The x87 and SSE control state of a freshly initialised FPU: FNINIT's,
// with MXCSR's reset value. Linux gives every new process this state, and
// a board guest starts in it too (docs/board.md), since no guest can be
// expected to run FNINIT before its compiler's code uses the FPU.
const (
	// fninitFCW masks every x87 exception, with 64-bit precision and
	// rounding to nearest.
	fninitFCW = 0x037F
	fninitFSW = 0
	// fninitFTW tags all eight x87 registers empty. Unicorn's FPTAG is the
	// full two-bits-a-register encoding (11 = empty), not FXSAVE's
	// abridged byte.
	fninitFTW = 0xFFFF
	// resetMXCSR masks every SIMD exception, rounding to nearest, with
	// neither flush-to-zero nor denormals-are-zero.
	resetMXCSR = 0x1F80
)

var fpuControl = []cpuReg{{uc.FPCW, "fpcw"}, {uc.FPSW, "fpsw"}, {uc.FPTAG, "fptag"}, {uc.MXCSR, "mxcsr"}}

// resetFPU puts the x87 and SSE control registers in their FNINIT state.
// Unicorn starts with FCW and MXCSR 0 and all eight x87 registers tagged
// valid. FCW 0 means 24-bit precision, though Unicorn only applies a
// precision when FCW is written: a program's first FLDCW, or a snapshot's
// restore, would switch every x87 operation to single precision from then
// on (musl's atof("0.1") reading 0.100006103515625).
func (m *Machine) resetFPU() error {
	regs := make([]uc.Reg, len(fpuControl))
	for i, r := range fpuControl {
		regs[i] = r.reg
	}
	want := []uint64{fninitFCW, fninitFSW, fninitFTW, resetMXCSR}
	if err := m.eng.RegWriteBatch(regs, want); err != nil {
		return fmt.Errorf("setting the x87/SSE control registers: %w", err)
	}
	// Read back: an engine that took FPTAG in another encoding, or dropped
	// a write, would leave the program a different FPU than documented.
	got := make([]uint64, len(regs))
	if err := m.eng.RegReadBatch(regs, got); err != nil {
		return fmt.Errorf("reading back the x87/SSE control registers: %w", err)
	}
	for i := range want {
		if got[i] != want[i] {
			return fmt.Errorf("%s reads %#x after %#x was written to it", fpuControl[i].name, got[i], want[i])
		}
	}
	return nil
}
