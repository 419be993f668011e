package vm

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"hvft/vm/tlb"
)

// determinismGuests are the guests of each class the hypervisor must keep
// deterministic (docs/architecture.md, "Determinism"): code patched by the
// guest (in its own page, and beside data it writes), code loaded by DMA,
// nested exceptions under a timer, the STI shadow with short epochs, CPU
// state outside the general registers, environment instructions followed
// in their block by memory accesses (where quiet epochs end), and a DMA
// transfer awaited with its interrupt masked.
// Each checks itself and powers off with 0 only if the machine behaved as
// x86 defines.
type determinismGuest struct {
	name     string
	args     []string
	disk     bool
	epochLen uint64
}

var determinismGuests = []determinismGuest{
	{"smc", nil, false, 5_000},
	{"dmacode", []string{"60"}, true, 5_000},
	{"nestexc", []string{"1500"}, false, 700},
	{"stishadow", []string{"400"}, false, 37},
	{"cpustate", []string{"3000"}, false, 5_000},
	{"envstop", []string{"5000"}, false, 5_000},
	{"smcdata", []string{"1500"}, false, 5_000},
	{"dmamask", nil, true, 5_000},
}

// tlbMatrix is 48 configurations of the modelled TLB: entry sizes from
// Unicorn's own 4 KiB to 1 MiB, the smallest capacity and a larger one,
// every policy, two seeds.
func tlbMatrix() []tlb.Config {
	var out []tlb.Config
	for _, page := range []uint64{4 << 10, 16 << 10, 64 << 10, 1 << 20} {
		for _, entries := range []int{tlb.MinEntries, 64} {
			for _, policy := range []tlb.Policy{tlb.Random, tlb.FIFO, tlb.LRU} {
				for seed := uint64(1); seed <= 2; seed++ {
					out = append(out, tlbConfig(page, entries, policy, seed*7919))
				}
			}
		}
	}
	return out
}

func everyNth(cs []tlb.Config, n int) []tlb.Config {
	var out []tlb.Config
	for i := 0; i < len(cs); i += n {
		out = append(out, cs[i])
	}
	return out
}

// recordGuest runs a guest live (timer ticks jittered) and returns its log.
func recordGuest(t *testing.T, name string, args []string, disk bool, epochLen uint64, cfg Config) (*Log, runResult) {
	t.Helper()
	log := &Log{}
	var out consoleBuffer
	lc := LiveConfig{Console: &out, Recorder: log, CPU: sharedCPU(t), TimerJitter: 100 * time.Microsecond}
	if disk {
		path := filepath.Join(t.TempDir(), "disk.img")
		sectors, err := DiskSectorsOf(path, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		if lc.Disk, err = OpenDisk(path, SyncNever); err != nil {
			t.Fatal(err)
		}
		defer lc.Disk.Close()
		cfg.DiskSectors = sectors
	}
	live, err := NewLive(lc)
	if err != nil {
		t.Fatal(err)
	}
	r := runGuest(t, name, args, cfg, live, nil, epochLen)
	r.out = out.b
	if r.err != nil || r.res.ExitCode != 0 {
		t.Fatalf("live %s: exit %d, %v\n%s", name, r.res.ExitCode, r.err, r.out)
	}
	return log, r
}

// TestDeterminismUnderEveryTLB records each determinism guest once, live,
// then replays the log under 48 TLB configurations: every replay must
// reach every epoch boundary at the same clock with the same state hash
// (RAM included), end with the same final hash and power off with 0, and
// the miss counts must differ between configurations (proof that the
// nondeterminism was there). Both epoch clocks: with the adaptive one,
// quiet epochs end at environment instructions the replay must find again.
func TestDeterminismUnderEveryTLB(t *testing.T) {
	matrix := tlbMatrix()
	if len(matrix) < 48 {
		t.Fatalf("only %d TLB configurations", len(matrix))
	}
	if testing.Short() {
		matrix = everyNth(matrix, 8)
	}
	for _, clock := range []EpochClock{ClockAlways, ClockAdaptive} {
		for _, g := range determinismGuests {
			t.Run(g.name+"/"+clock.String(), func(t *testing.T) { determinismUnderEveryTLB(t, g, clock, matrix) })
		}
	}
}

func determinismUnderEveryTLB(t *testing.T, g determinismGuest, clock EpochClock, matrix []tlb.Config) {
	cfg := Config{TLB: tlbConfig(64<<10, 32, tlb.Random, 3), Clock: clock}
	log, live := recordGuest(t, g.name, g.args, g.disk, g.epochLen, cfg)
	if clock == ClockAlways && len(live.ends) < 10 {
		t.Fatalf("live run of %d epochs is too short to mean anything", len(live.ends))
	}
	misses := map[uint64]bool{live.stats.TLBMisses: true}
	for _, tc := range matrix {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		rcfg := Config{TLB: tc, DiskSectors: map[bool]uint64{true: 2048}[g.disk], Clock: clock}
		rep := runGuest(t, g.name, g.args, rcfg, NewReplay(ctx, NewLogSource(log)), nil, g.epochLen)
		cancel()
		where := fmt.Sprintf("%s, TLB %d x %d %v seed %d", g.name, tc.Entries, tc.PageSize, tc.Policy, tc.Seed)
		if rep.err != nil || rep.res.ExitCode != 0 {
			t.Fatalf("%s: replay exit %d, %v", where, rep.res.ExitCode, rep.err)
		}
		if err := sameTrail(live, rep); err != nil {
			t.Fatalf("%s: %v", where, err)
		}
		misses[rep.stats.TLBMisses] = true
	}
	if len(misses) < 3 {
		t.Errorf("miss counts %v: the TLB configurations did not vary the misses", misses)
	}
	t.Logf("%d epochs, %d quiet", len(live.ends), live.stats.QuietEpochs)
}

// sameTrail compares two runs epoch by epoch.
func sameTrail(want, got runResult) error {
	if len(got.ends) != len(want.ends) {
		return fmt.Errorf("%d epochs, want %d", len(got.ends), len(want.ends))
	}
	for i := range want.ends {
		w, g := want.ends[i], got.ends[i]
		if g.Hash != w.Hash || g.Clock != w.Clock || g.RIP != w.RIP || g.Reason != w.Reason {
			return fmt.Errorf("epoch %d: %v, hash %v clock %d rip %#x, want %v, %v clock %d rip %#x", i+1, g.Reason, g.Hash, g.Clock, g.RIP, w.Reason, w.Hash, w.Clock, w.RIP)
		}
	}
	if got.final != want.final || got.stats.Blocks != want.stats.Blocks {
		return fmt.Errorf("final hash %v after %d blocks, want %v after %d", got.final, got.stats.Blocks, want.final, want.stats.Blocks)
	}
	return nil
}

// TestDeterministicGuestsLive: the determinism guests that read nothing
// from the environment (no timer, no disk) give one final hash and block
// count live under every TLB configuration.
func TestDeterministicGuestsLive(t *testing.T) {
	matrix := tlbMatrix()
	if testing.Short() {
		matrix = everyNth(matrix, 8)
	}
	for _, g := range []struct {
		name string
		args []string
	}{{"smc", nil}, {"cpustate", []string{"3000"}}, {"envstop", []string{"5000"}}, {"smcdata", []string{"1500"}}} {
		t.Run(g.name, func(t *testing.T) {
			var first *runResult
			for _, tc := range matrix {
				r := runGuest(t, g.name, g.args, Config{TLB: tc}, nil, nil, 5_000)
				if r.err != nil || r.res.ExitCode != 0 {
					t.Fatalf("TLB %+v: exit %d, %v\n%s", tc, r.res.ExitCode, r.err, r.out)
				}
				if first == nil {
					first = &r
					continue
				}
				if r.final != first.final || r.stats.Blocks != first.stats.Blocks || string(r.out) != string(first.out) {
					t.Fatalf("TLB %+v: final %v after %d blocks, first %v after %d", tc, r.final, r.stats.Blocks, first.final, first.stats.Blocks)
				}
			}
		})
	}
}

// TestRdtscInRAMIsCaughtInItsEpoch: rdtscram prints "rdtscram: storing",
// stores an RDTSC value in RAM, clears every register it touched and spins
// for many epochs. Replayed, RDTSC reads another value, so only RAM
// differs; the replay must report the divergence at the end of the epoch of
// the store (the one of the marker, or the next if a boundary fell between
// the two), since every epoch's hash covers RAM.
func TestRdtscInRAMIsCaughtInItsEpoch(t *testing.T) {
	log := &Log{}
	var line []byte
	marker := uint64(0)
	live, err := NewLive(LiveConfig{Recorder: log, CPU: sharedCPU(t), OnOutput: func(o Output) error {
		line = append(line, byte(o.Value))
		if o.Value == '\n' {
			if string(line) == "rdtscram: storing\n" && marker == 0 {
				marker = o.At.Epoch
			}
			line = line[:0]
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{TLB: tlbConfig(64<<10, 32, tlb.Random, 3)}
	const epochLen = 3_000
	r := runGuest(t, "rdtscram", []string{"2000000"}, cfg, live, nil, epochLen)
	live.Close()
	if r.err != nil || r.res.ExitCode != 0 || marker == 0 {
		t.Fatalf("live rdtscram: exit %d, %v, marker at epoch %d", r.res.ExitCode, r.err, marker)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	rep := runGuest(t, "rdtscram", []string{"2000000"}, cfg, NewReplay(ctx, NewLogSource(log)), nil, epochLen)
	var div *DivergenceError
	if !errors.As(rep.err, &div) {
		t.Fatalf("replay: %v, want a divergence", rep.err)
	}
	if div.At.Epoch != marker && div.At.Epoch != marker+1 {
		t.Fatalf("divergence at epoch %d; the store follows the marker of epoch %d (of %d)", div.At.Epoch, marker, len(r.ends))
	}
	if uint64(len(r.ends)) < marker+100 {
		t.Fatalf("the run has %d epochs after the store; too few to show anything", uint64(len(r.ends))-marker)
	}
	t.Logf("store after the marker of epoch %d, divergence at epoch %d, of %d", marker, div.At.Epoch, len(r.ends))
}

// TestConsoleSameUnderBothClocks: both replicas of a pair making the same
// mistake is invisible to state hashes, so the clocks are compared with
// each other instead: every determinism guest, and a guest that prints
// thousands of lines through printf, must print exactly the same bytes and
// power off with 0 under the always and the adaptive clock.
func TestConsoleSameUnderBothClocks(t *testing.T) {
	guests := append([]determinismGuest{{"printer", []string{"3000"}, false, 5_000}}, determinismGuests...)
	for _, g := range guests {
		if g.name == "nestexc" || g.name == "stishadow" {
			continue // their output counts timer interrupts, which are live
		}
		t.Run(g.name, func(t *testing.T) {
			var outs [2][]byte
			for i, clock := range []EpochClock{ClockAlways, ClockAdaptive} {
				_, r := recordGuest(t, g.name, g.args, g.disk, g.epochLen, Config{TLB: tlbConfig(64<<10, 32, tlb.Random, 3), Clock: clock})
				outs[i] = r.out
			}
			if string(outs[0]) != string(outs[1]) {
				t.Fatalf("console under always (%d bytes) and adaptive (%d bytes) differ:\n%s\n---\n%s", len(outs[0]), len(outs[1]), outs[0], outs[1])
			}
			if len(outs[0]) == 0 {
				t.Fatal("the guest printed nothing")
			}
		})
	}
}

// TestAdaptiveReplaysAlike: under the adaptive clock, a log replayed again
// and again under the very configuration it was recorded with reaches
// every boundary alike. Here a DMA transfer lands over a routine a spin
// keeps calling: which translations Unicorn keeps, and how the clock's
// hook is stopped, must not depend on the host's timing.
func TestAdaptiveReplaysAlike(t *testing.T) {
	cfg := Config{TLB: tlbConfig(64<<10, 32, tlb.Random, 3), Clock: ClockAdaptive}
	for _, g := range []determinismGuest{{"dmamask", nil, true, 5_000}, {"dmacode", []string{"60"}, true, 5_000}} {
		log, live := recordGuest(t, g.name, g.args, g.disk, g.epochLen, cfg)
		for i := range 6 {
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			rcfg := cfg
			rcfg.DiskSectors = 2048
			rep := runGuest(t, g.name, g.args, rcfg, NewReplay(ctx, NewLogSource(log)), nil, g.epochLen)
			cancel()
			if rep.err != nil || rep.res.ExitCode != 0 {
				t.Fatalf("%s replay %d: exit %d, %v", g.name, i, rep.res.ExitCode, rep.err)
			}
			if err := sameTrail(live, rep); err != nil {
				t.Fatalf("%s replay %d: %v", g.name, i, err)
			}
		}
	}
}
