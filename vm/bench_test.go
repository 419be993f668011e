package vm

import (
	"context"
	"slices"
	"testing"
	"time"

	"hvft/vm/tlb"
)

func hvftRun(b *testing.B, name string, args []string, cfg Config, epoch uint64) time.Duration {
	b.Helper()
	live, err := NewLive(LiveConfig{CPU: sharedCPU(b)})
	if err != nil {
		b.Fatal(err)
	}
	defer live.Close()
	cfg.Args = args
	m, err := New(cfg, image(b, name), live, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	start := time.Now()
	res, err := m.Run(context.Background(), RunOptions{EpochLength: epoch})
	if err != nil || res.ExitCode != 0 {
		b.Fatalf("%s: exit %d, %v", name, res.ExitCode, err)
	}
	return time.Since(start)
}

// median is the middle value (the mean of the two middle ones for an even
// count).
func median(xs []time.Duration) time.Duration {
	s := slices.Clone(xs)
	slices.Sort(s)
	if n := len(s); n%2 == 0 {
		return (s[n/2-1] + s[n/2]) / 2
	}
	return s[len(s)/2]
}

// BenchmarkOverhead measures, in one run, a guest on bare Unicorn (no
// hooks, all RAM mapped), under hvft (epoch clock, traps, soft TLB with the
// default 32 x 64 KiB entries, 100,000-block epochs), and under Unicorn's
// own instruction counting, and reports the latter two as ratios to bare:
// medians over at least 5 repetitions, interleaved.
// compute's blocks are long (about 3,400 instructions) and hide per-block
// costs; branchy's are short (a CoreMark-class mix of lists, a state
// machine and CRC), so the epoch clock's hook shows there; tlbstress shows
// the soft TLB's cost on a guest built to miss. One untimed round first: the
// first engine of a process pays for page faults the others do not.
func BenchmarkOverhead(b *testing.B) {
	for _, g := range []struct {
		name string
		args []string
	}{
		{"compute", []string{"compute", "4", "1"}},
		{"branchy", []string{"branchy", "64", "3000"}},
		{"tlbstress", []string{"tlbstress", "8", "4"}},
	} {
		b.Run(g.name, func(b *testing.B) {
			img := image(b, g.name)
			cfg := Config{RAMSize: DefaultRAMSize, TLB: tlbConfig(64<<10, 32, tlb.Random, 1)}
			bareRun := func(count uint64) time.Duration {
				r, err := RunBare(img, DefaultRAMSize, g.args, count)
				if err != nil {
					b.Fatal(err)
				}
				return r.Elapsed
			}
			bareRun(0)
			hvftRun(b, g.name, g.args, cfg, 100_000)
			b.ResetTimer()
			var bare, hv, counted []time.Duration
			for i := 0; i < max(b.N, 5); i++ {
				bare = append(bare, bareRun(0))
				hv = append(hv, hvftRun(b, g.name, g.args, cfg, 100_000))
				counted = append(counted, bareRun(1<<62))
			}
			mb, mh, mc := median(bare), median(hv), median(counted)
			b.ReportMetric(float64(mb.Microseconds())/1e3, "bare-ms")
			b.ReportMetric(float64(mh.Microseconds())/1e3, "hvft-ms")
			b.ReportMetric(mh.Seconds()/mb.Seconds(), "hvft/bare")
			b.ReportMetric(mc.Seconds()/mb.Seconds(), "uc-count/bare")
		})
	}
}

// BenchmarkTLBEviction measures tlbstress (a guest built to miss: 8 MiB
// touched in a scattered order through 32 entries of 64 KiB) on bare
// Unicorn, under hvft with evictions that drop the victim's pages from
// Unicorn's TLB, and under hvft with evictions that flush all of it (as
// before), interleaved, medians of at least 5: the ratios to bare are the
// issue's tlbstress figure and what the per-page flush saves.
func BenchmarkTLBEviction(b *testing.B) {
	args := []string{"tlbstress", "8", "4"}
	img := image(b, "tlbstress")
	cfg := Config{RAMSize: DefaultRAMSize, TLB: tlbConfig(64<<10, 32, tlb.Random, 1)}
	whole := cfg
	whole.WholeTLBFlushes = true
	bareRun := func() time.Duration {
		r, err := RunBare(img, DefaultRAMSize, args, 0)
		if err != nil {
			b.Fatal(err)
		}
		return r.Elapsed
	}
	bareRun()
	hvftRun(b, "tlbstress", args, cfg, 100_000)
	b.ResetTimer()
	var bare, page, all []time.Duration
	for i := 0; i < max(b.N, 5); i++ {
		bare = append(bare, bareRun())
		page = append(page, hvftRun(b, "tlbstress", args, cfg, 100_000))
		all = append(all, hvftRun(b, "tlbstress", args, whole, 100_000))
	}
	mb, mp, ma := median(bare), median(page), median(all)
	b.ReportMetric(float64(mb.Microseconds())/1e3, "bare-ms")
	b.ReportMetric(mp.Seconds()/mb.Seconds(), "page-flush/bare")
	b.ReportMetric(ma.Seconds()/mb.Seconds(), "whole-flush/bare")
}

// BenchmarkHash is the per-epoch hash of a machine at rest: registers,
// clock, devices and the RAM digest, with no page written since the last
// one. It runs on the machine's thread, as the epoch loop does.
func BenchmarkHash(b *testing.B) {
	live, err := NewLive(LiveConfig{CPU: sharedCPU(b)})
	if err != nil {
		b.Fatal(err)
	}
	defer live.Close()
	m, err := New(Config{TLB: tlbConfig(64<<10, 32, tlb.Random, 1), Args: []string{"hello"}}, image(b, "hello"), live, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	b.ResetTimer()
	err = m.call(func() error {
		for i := 0; i < b.N; i++ {
			if _, err := m.hash(); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
}

// BenchmarkEpochCost is the per-epoch fixed cost (stop, hash, restart) of
// an unreplicated run: compute with 200-block epochs against the same run
// with 1,000,000-block ones, interleaved, the difference of the
// medians (at least 5 of each) divided by the extra epochs.
func BenchmarkEpochCost(b *testing.B) {
	args := []string{"compute", "8", "2"}
	cfg := Config{RAMSize: DefaultRAMSize, TLB: tlbConfig(64<<10, 32, tlb.Random, 1)}
	epochs := func(n uint64) (time.Duration, uint64) {
		live, err := NewLive(LiveConfig{CPU: sharedCPU(b)})
		if err != nil {
			b.Fatal(err)
		}
		defer live.Close()
		c := cfg
		c.Args = args
		m, err := New(c, image(b, "compute"), live, nil)
		if err != nil {
			b.Fatal(err)
		}
		defer m.Close()
		start := time.Now()
		res, err := m.Run(context.Background(), RunOptions{EpochLength: n})
		if err != nil || res.ExitCode != 0 {
			b.Fatalf("compute: exit %d, %v", res.ExitCode, err)
		}
		return time.Since(start), m.Stats().Epochs
	}
	epochs(200)
	b.ResetTimer()
	var short, long []time.Duration
	var nShort, nLong uint64
	for i := 0; i < max(b.N, 5); i++ {
		d, n := epochs(200)
		short, nShort = append(short, d), n
		d, n = epochs(1_000_000)
		long, nLong = append(long, d), n
	}
	b.ReportMetric(float64(median(short)-median(long))/1e3/float64(nShort-nLong), "us/epoch")
	b.ReportMetric(float64(nShort), "epochs")
}
