package vm

import (
	"context"
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

// BenchmarkOverhead measures, in one run, a guest on bare Unicorn (no
// hooks, all RAM mapped), under hvft (epoch clock, traps, soft TLB with the
// default 32 x 64 KiB entries, 100,000-block epochs), and under Unicorn's
// own instruction counting, and reports the latter two as ratios to bare.
// compute is the target (hvft/bare <= 1.5); tlbstress shows the
// soft TLB's cost on a guest built to miss. One untimed round first: the
// first engine of a process pays for page faults the others do not.
func BenchmarkOverhead(b *testing.B) {
	for _, g := range []struct {
		name string
		args []string
	}{
		{"compute", []string{"compute", "4", "1"}},
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
			var bare, hv, counted time.Duration
			for i := 0; i < b.N; i++ {
				bare += bareRun(0)
				hv += hvftRun(b, g.name, g.args, cfg, 100_000)
				counted += bareRun(1 << 62)
			}
			b.ReportMetric(float64(bare.Microseconds())/1e3/float64(b.N), "bare-ms/op")
			b.ReportMetric(float64(hv.Microseconds())/1e3/float64(b.N), "hvft-ms/op")
			b.ReportMetric(hv.Seconds()/bare.Seconds(), "hvft/bare")
			b.ReportMetric(counted.Seconds()/bare.Seconds(), "uc-count/bare")
		})
	}
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
