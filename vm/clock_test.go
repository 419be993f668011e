package vm

import (
	"context"
	"strings"
	"testing"

	"hvft/vm/tlb"
)

func TestBoardQuiet(t *testing.T) {
	for _, c := range []struct {
		name  string
		board Board
		quiet bool
	}{
		{"reset", *NewBoard(DefaultRAMSize, 0), true},
		{"timer running, masked", Board{PICMask: ^uint32(0), TimerPeriod: 1000}, true},
		{"timer running, unmasked", Board{PICMask: ^uint32(1 << IRQTimer), TimerPeriod: 1000}, false},
		{"timer stopped, unmasked", Board{PICMask: ^uint32(1 << IRQTimer)}, true},
		{"console input unmasked", Board{PICMask: ^uint32(1 << IRQConsoleRX)}, false},
		{"disk unmasked, idle", Board{PICMask: ^uint32(1 << IRQDisk)}, true},
		{"disk unmasked, busy", Board{PICMask: ^uint32(1 << IRQDisk), DiskOp: &DiskOp{}}, false},
		// A transfer lands at a boundary whether or not its interrupt is
		// masked: a guest polling RAM for it needs the clock.
		{"disk masked, busy", Board{PICMask: ^uint32(0), DiskOp: &DiskOp{}}, false},
		{"pending, masked", Board{PICMask: ^uint32(0), PICPending: 1 << IRQTimer}, true},
		{"pending, unmasked", Board{PICMask: ^uint32(1 << 5), PICPending: 1 << 5}, false},
	} {
		if got := c.board.Quiet(); got != c.quiet {
			t.Errorf("%s: quiet %v, want %v", c.name, got, c.quiet)
		}
	}
}

// TestAdaptiveClockSwitches: the ticker starts quiet, and its first epoch
// ends at the OUT that unmasks its running timer, without the clock having
// moved; from then on every epoch is counted and as long as configured.
// The guest's output is the same as with the clock always on.
func TestAdaptiveClockSwitches(t *testing.T) {
	cfg := Config{TLB: tlbConfig(64<<10, 32, tlb.Random, 3), Clock: ClockAdaptive}
	r := runGuest(t, "ticker", []string{"5", "1000"}, cfg, nil, nil, 20_000)
	if r.err != nil || r.res.ExitCode != 0 || len(r.ends) < 3 {
		t.Fatalf("exit %d, %v, %d epochs", r.res.ExitCode, r.err, len(r.ends))
	}
	first := r.ends[0]
	if first.Reason != StopEnv || first.Clock != 0 {
		t.Fatalf("first epoch ended by %v at clock %d; want at an environment instruction with the clock stopped", first.Reason, first.Clock)
	}
	if r.stats.QuietEpochs != 1 {
		t.Errorf("%d quiet epochs, want 1", r.stats.QuietEpochs)
	}
	for i, e := range r.ends[1:] {
		if e.Reason == StopLimit && e.Clock != r.ends[i].Clock+20_000 {
			t.Fatalf("epoch %d: clock %d after %d, want a counted epoch of 20000 blocks", i+2, e.Clock, r.ends[i].Clock)
		}
	}
	if got := strings.Count(string(r.out), "tick "); got != 5 {
		t.Errorf("%d ticks, want 5:\n%s", got, r.out)
	}
}

// TestPausedClockChangesNothing: diskkv under the adaptive clock arms its
// disk interrupt every few epochs. Recorded with the block hook removed
// in every quiet epoch and replayed with it paused (installed, counting
// nothing) whenever it can be, every epoch ends at the same clock, RIP and
// hash: how the clock is stopped is invisible, so it may be chosen by
// host time. A paused hook that still counted would move the clock.
func TestPausedClockChangesNothing(t *testing.T) {
	cfg := Config{TLB: tlbConfig(64<<10, 32, tlb.Random, 3), Clock: ClockAdaptive, hookChoice: hookRemove}
	args := []string{"run", "60", "3", "8"}
	log, live := recordGuest(t, "diskkv", args, true, 5_000, cfg)
	if live.stats.QuietEpochs < 20 || live.stats.ClockPauses != 0 {
		t.Fatalf("live: %d quiet epochs, %d paused: want many quiet, none paused", live.stats.QuietEpochs, live.stats.ClockPauses)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	rcfg := Config{TLB: tlbConfig(16<<10, 8, tlb.FIFO, 5), DiskSectors: 2048, Clock: ClockAdaptive, hookChoice: hookPause}
	rep := runGuest(t, "diskkv", args, rcfg, NewReplay(ctx, NewLogSource(log)), nil, 5_000)
	if rep.err != nil || rep.res.ExitCode != 0 {
		t.Fatalf("replay: exit %d, %v", rep.res.ExitCode, rep.err)
	}
	if rep.stats.ClockPauses < rep.stats.QuietEpochs/2 {
		t.Fatalf("replay paused the clock in %d of %d quiet epochs", rep.stats.ClockPauses, rep.stats.QuietEpochs)
	}
	if err := sameTrail(live, rep); err != nil {
		t.Fatal(err)
	}
}
