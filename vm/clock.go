package vm

import "fmt"

// EpochClock says when the block clock runs. Counting blocks costs a call
// per translation block (a third of the run time of a guest with short
// blocks); it is needed only where an interrupt may have to be delivered
// at a point a second copy finds again.
type EpochClock uint8

// Epoch clocks.
const (
	// ClockAlways counts every block: every epoch is the configured
	// number of blocks long (unless the guest halts, powers off or
	// faults).
	ClockAlways EpochClock = iota
	// ClockAdaptive counts blocks only in epochs in which an interrupt can
	// become deliverable. An epoch that starts quiet (Board.Quiet) runs
	// without the clock and ends at an environment instruction: the first
	// one after which the board is no longer quiet, or the
	// QuietEpochOps-th of the epoch; or at HLT, power-off or a fault. Both
	// replicas find such an end from the guest's execution alone.
	ClockAdaptive
)

// QuietEpochOps bounds a quiet epoch: it ends at its QuietEpochOps-th
// environment instruction (IN, OUT or CPUID), so that a guest that talks to
// its devices still has its state hashed and compared regularly.
const QuietEpochOps = 4096

// ParseEpochClock reads "always" or "adaptive".
func ParseEpochClock(s string) (EpochClock, error) {
	switch s {
	case "always", "":
		return ClockAlways, nil
	case "adaptive":
		return ClockAdaptive, nil
	}
	return 0, fmt.Errorf("epoch clock %q: want always or adaptive", s)
}

func (c EpochClock) String() string {
	if c == ClockAdaptive {
		return "adaptive"
	}
	return "always"
}

// Quiet reports whether no interrupt can become deliverable before the
// guest's next environment instruction: nothing is pending on an unmasked
// line, and no unmasked line has a source that can fire (a running timer,
// console input), and no disk operation is in flight (its data lands at a
// boundary, interrupt or not). Only IN and OUT change what it depends on,
// and events, which arrive only at epoch boundaries.
func (b *Board) Quiet() bool {
	open := ^b.PICMask
	switch {
	case b.PICPending&open != 0:
		return false
	case open&(1<<IRQTimer) != 0 && b.TimerPeriod != 0:
		return false
	case open&(1<<IRQConsoleRX) != 0:
		return false // input may arrive at any time
	case b.DiskOp != nil:
		// Masked or not: the transfer lands in RAM at a boundary, which
		// a guest polling memory sees without an interrupt.
		return false
	}
	return true
}

// nextQuiet reports whether the next epoch runs without the block clock.
func (m *Machine) nextQuiet() bool {
	return m.cfg.Clock == ClockAdaptive && m.board.Quiet()
}

// afterEnvOp ends a quiet epoch at an environment instruction that armed an
// interrupt source or reached the epoch's bound. The stop takes effect at
// the next block boundary, as a block-clock stop does.
func (m *Machine) afterEnvOp() {
	if !m.quiet || m.quietStop {
		return
	}
	m.quietOps++
	if m.quietOps >= QuietEpochOps || !m.board.Quiet() {
		m.quietStop = true
		m.eng.StopPrecise()
	}
}
