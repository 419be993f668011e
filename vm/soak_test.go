package vm

import (
	"os"
	"strconv"
	"testing"
	"time"

	"hvft/vm/tlb"
)

// TestSoak runs exception- and interrupt-heavy guests, and the guests of
// stops at environment instructions and of code beside data, under the
// smallest TLB the flags allow (4 entries of 4 KiB), with short epochs, a
// fresh seed each time and the two epoch clocks in turn, until HVFT_SOAK
// (a duration, e.g. 10m) has passed: no run may crash, fault or fail its
// own check. The first version of the
// machine crashed libunicorn within about 35 s of this. `make soak` runs
// it for 10 minutes; without HVFT_SOAK it is skipped.
func TestSoak(t *testing.T) {
	d, err := time.ParseDuration(os.Getenv("HVFT_SOAK"))
	if err != nil || d <= 0 {
		t.Skip("set HVFT_SOAK to a duration (make soak: 10m)")
	}
	seed := uint64(time.Now().UnixNano())
	if s, err := strconv.ParseUint(os.Getenv("HVFT_SOAK_SEED"), 10, 64); err == nil {
		seed = s
	}
	t.Logf("soak for %v, first seed %d (HVFT_SOAK_SEED replays it)", d, seed)
	work := []struct {
		name     string
		args     []string
		epochLen uint64
	}{
		{"nestexc", []string{"20000"}, 97},
		{"stishadow", []string{"3000"}, 13},
		{"smc", nil, 331},
		{"faults", nil, 7},
		{"ticker", []string{"200", "50"}, 1000},
		{"envstop", []string{"9000"}, 211},
		{"smcdata", []string{"2000"}, 503},
		{"printer", []string{"2000"}, 1009},
	}
	deadline := time.Now().Add(d)
	runs := 0
	for time.Now().Before(deadline) {
		g := work[runs%len(work)]
		clock := EpochClock((runs / len(work)) % 2)
		cfg := Config{TLB: tlbConfig(4<<10, tlb.MinEntries, tlb.Policy(runs%3), seed+uint64(runs)), Clock: clock}
		r := runGuest(t, g.name, g.args, cfg, nil, nil, g.epochLen)
		if r.err != nil || r.res.ExitCode != 0 {
			t.Fatalf("run %d (%s, %v clock, seed %d): exit %d, %v\n%s", runs, g.name, clock, cfg.TLB.Seed, r.res.ExitCode, r.err, r.out)
		}
		runs++
	}
	t.Logf("%d runs, no failure", runs)
}
