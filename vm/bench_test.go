package vm

import (
	"context"
	"testing"
	"time"

	"hvft/vm/tlb"
)

// computeArgs sizes the compute guest for the benchmarks: 4 MiB, once.
var computeArgs = []string{"compute", "4", "1"}

func hvftRun(b *testing.B, cfg Config, epoch uint64) time.Duration {
	b.Helper()
	live, err := NewLive(LiveConfig{CPU: sharedCPU(b)})
	if err != nil {
		b.Fatal(err)
	}
	defer live.Close()
	cfg.Args = computeArgs
	m, err := New(cfg, image(b, "compute"), live, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	start := time.Now()
	res, err := m.Run(context.Background(), RunOptions{EpochLength: epoch})
	if err != nil || res.ExitCode != 0 {
		b.Fatalf("compute: exit %d, %v", res.ExitCode, err)
	}
	return time.Since(start)
}

// BenchmarkComputeOverhead measures, in one run, the compute guest on bare
// Unicorn (no hooks), under hvft (epoch clock, traps, soft TLB with the
// default 32 x 64 KiB), and under Unicorn's own instruction counting, and
// reports the latter two as ratios to bare. Target: hvft/bare <= 1.5.
func BenchmarkComputeOverhead(b *testing.B) {
	img := image(b, "compute")
	cfg := Config{RAMSize: DefaultRAMSize, TLB: tlbConfig(64<<10, 32, tlb.Random, 1)}
	var bare, hv, counted time.Duration
	for i := 0; i < b.N; i++ {
		r, err := RunBare(img, DefaultRAMSize, computeArgs, 0)
		if err != nil {
			b.Fatal(err)
		}
		bare += r.Elapsed
		hv += hvftRun(b, cfg, 100_000)
		r, err = RunBare(img, DefaultRAMSize, computeArgs, 1<<62)
		if err != nil {
			b.Fatal(err)
		}
		counted += r.Elapsed
	}
	b.ReportMetric(float64(bare.Milliseconds())/float64(b.N), "bare-ms/op")
	b.ReportMetric(float64(hv.Milliseconds())/float64(b.N), "hvft-ms/op")
	b.ReportMetric(hv.Seconds()/bare.Seconds(), "hvft/bare")
	b.ReportMetric(counted.Seconds()/bare.Seconds(), "uc-count/bare")
}

// BenchmarkHashCPUAndDevices is the per-epoch hash: registers, clock and
// devices, no RAM.
func BenchmarkHashCPUAndDevices(b *testing.B) {
	benchHash(b, false)
}

// BenchmarkHashWithRAM adds 16 MiB of RAM, taken every --ram-hash-every
// epochs.
func BenchmarkHashWithRAM(b *testing.B) {
	benchHash(b, true)
}

func benchHash(b *testing.B, withRAM bool) {
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
	if withRAM {
		b.SetBytes(DefaultRAMSize)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := m.Hash(withRAM); err != nil {
			b.Fatal(err)
		}
	}
}
