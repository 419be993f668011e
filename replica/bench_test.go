package replica

import (
	"context"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"hvft/epoch"
	"hvft/vm"
	"hvft/vm/tlb"
)

// pairRun runs one in-process primary/backup pair over loopback and
// returns the primary's wall time and epoch count.
func pairRun(b *testing.B, mach Machine, mode epoch.Mode) (time.Duration, uint64) {
	b.Helper()
	cpu, err := cpuModel()
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), pairTimeout)
	defer cancel()
	var wg sync.WaitGroup
	var prep, brep *Report
	var perr, berr error
	var elapsed time.Duration
	wg.Add(2)
	go func() {
		defer wg.Done()
		start := time.Now()
		prep, perr = RunPrimary(ctx, PrimaryOptions{Options: Options{Machine: mach, Sink: NewPlainSink(io.Discard), CPU: cpu},
			Listener: ln, BackupWait: time.Minute, Mode: mode, MaxLag: 4})
		elapsed = time.Since(start)
	}()
	go func() {
		defer wg.Done()
		brep, berr = RunBackup(ctx, BackupOptions{Options: Options{Machine: mach, Sink: NewPlainSink(io.Discard), CPU: cpu}, Primary: ln.Addr().String()})
	}()
	wg.Wait()
	if perr != nil || berr != nil || prep.FinalHash != brep.FinalHash {
		b.Fatalf("pair: %v / %v, hashes %s / %s", perr, berr, prep.FinalHash, brep.FinalHash)
	}
	return elapsed, prep.Epochs
}

func soloRun(b *testing.B, mach Machine) time.Duration {
	b.Helper()
	cpu, _ := cpuModel()
	r, err := RunAlone(context.Background(), mach, vm.LiveConfig{CPU: cpu}, vm.RunOptions{}, nil)
	if err != nil {
		b.Fatal(err)
	}
	return r.Elapsed
}

// BenchmarkReplicatedCompute: compute unreplicated (hvft run's machine)
// against a primary/backup pair on this machine over loopback, default
// (bounded) and strict protocol, as ratios measured in one run. Target:
// bounded/run <= 1.1.
func BenchmarkReplicatedCompute(b *testing.B) {
	mach := benchMachine(b, "compute", []string{"4", "1"})
	soloRun(b, mach) // warm up
	var solo, bounded, strict time.Duration
	for i := 0; i < b.N; i++ {
		solo += soloRun(b, mach)
		d, _ := pairRun(b, mach, epoch.Bounded)
		bounded += d
		d, _ = pairRun(b, mach, epoch.Strict)
		strict += d
	}
	b.ReportMetric(float64(solo.Milliseconds())/float64(b.N), "run-ms/op")
	b.ReportMetric(bounded.Seconds()/solo.Seconds(), "bounded/run")
	b.ReportMetric(strict.Seconds()/solo.Seconds(), "strict/run")
}

// BenchmarkTickerEpochRate: epochs per second of a replicated ticker with
// a fast timer (every epoch ends at a HLT and carries an interrupt).
func BenchmarkTickerEpochRate(b *testing.B) {
	mach := benchMachine(b, "ticker", []string{"300", "200"})
	var total time.Duration
	var epochs uint64
	for i := 0; i < b.N; i++ {
		d, n := pairRun(b, mach, epoch.Bounded)
		total += d
		epochs += n
	}
	b.ReportMetric(float64(epochs)/total.Seconds(), "epochs/s")
}

// benchMachine is the default machine: 32 x 64 KiB TLB, 100,000-block
// epochs, RAM hashed every 64 epochs (hvft's defaults).
func benchMachine(b testing.TB, name string, args []string) Machine {
	m := machine(b, name, args, tlb.Config{PageSize: 64 << 10, Entries: 32, Seed: 1})
	m.EpochBlocks = 100_000
	return m
}

// BenchmarkDiskkv: diskkv's puts per second unreplicated against a
// replicated pair (shared image, default protocol), with durable writes
// (fsync per write) and without, reported with the ratio.
func BenchmarkDiskkv(b *testing.B) {
	const puts = 200
	for _, sync := range []vm.DiskSync{vm.SyncAlways, vm.SyncNever} {
		name := map[vm.DiskSync]string{vm.SyncAlways: "fsync", vm.SyncNever: "nosync"}[sync]
		b.Run(name, func(b *testing.B) {
			var solo, pair time.Duration
			for i := 0; i < b.N; i++ {
				for _, replicated := range []bool{false, true} {
					img := filepath.Join(b.TempDir(), "disk.img")
					sectors, err := vm.DiskSectorsOf(img, 1<<20)
					if err != nil {
						b.Fatal(err)
					}
					mach := benchMachine(b, "diskkv", []string{"run", strconv.Itoa(puts), "1", "8"})
					mach.DiskPath, mach.DiskSync, mach.Config.DiskSectors = img, sync, sectors
					if replicated {
						d, _ := pairRun(b, mach, epoch.Bounded)
						pair += d
					} else {
						solo += soloRun(b, mach)
					}
				}
			}
			n := float64(puts * b.N)
			b.ReportMetric(n/solo.Seconds(), "run-puts/s")
			b.ReportMetric(n/pair.Seconds(), "replicated-puts/s")
			b.ReportMetric(pair.Seconds()/solo.Seconds(), "replicated/run")
		})
	}
}

// BenchmarkJoin: a backup joins a running primary by state transfer, for
// 16 MiB and 256 MiB of RAM, with the guest idle (ticker, halted between
// ticks) and writing RAM without pause (ramwriter). Reports the guest's
// pause for the stop-and-copy, the pre-copy's duration and the bytes sent.
// Target: pause under 100 ms for 256 MiB while writing, on loopback.
func BenchmarkJoin(b *testing.B) {
	for _, ram := range []uint64{16 << 20, 256 << 20} {
		for _, g := range []struct {
			name string
			args []string
		}{{"ticker", []string{"600", "5000"}}, {"ramwriter", []string{"4", "1500"}}} {
			b.Run(fmt.Sprintf("%dMiB/%s", ram>>20, g.name), func(b *testing.B) {
				var pause, precopy float64
				var bytes, dirty uint64
				for i := 0; i < b.N; i++ {
					j := joinOnce(b, ram, g.name, g.args)
					pause += j.PauseMS
					precopy += j.PrecopyMS
					bytes += j.Bytes
					dirty += j.DirtyBytes
				}
				n := float64(b.N)
				b.ReportMetric(pause/n, "pause-ms")
				b.ReportMetric(precopy/n, "precopy-ms")
				b.ReportMetric(float64(bytes)/n/(1<<20), "MiB-sent")
				b.ReportMetric(float64(dirty)/n/(1<<20), "MiB-resent")
			})
		}
	}
}

func joinOnce(b testing.TB, ram uint64, guest string, args []string) Join {
	b.Helper()
	for attempt := 1; ; attempt++ {
		j, finishedFirst := joinAttempt(b, ram, guest, args)
		if !finishedFirst {
			return j
		}
		// The guest finished before the join did (a loaded host slows the
		// transfer, not the guest's work): again, with four times the work.
		if attempt == 4 {
			b.Fatalf("join: the primary's guest finished before the join, %d times, the last with %v", attempt, args)
		}
		args = scaleWork(guest, args, 4)
	}
}

// scaleWork multiplies the count of work units in a guest's arguments.
func scaleWork(guest string, args []string, k uint64) []string {
	at := map[string]int{"ramwriter": 1, "ticker": 0, "cpustate": 1}[guest]
	out := append([]string(nil), args...)
	if at < len(out) {
		if n, err := strconv.ParseUint(out[at], 10, 64); err == nil {
			out[at] = strconv.FormatUint(n*k, 10)
		}
	}
	return out
}

// joinAttempt runs a primary and a joiner once; finishedFirst says the
// primary's run ended before the joiner was in.
func joinAttempt(b testing.TB, ram uint64, guest string, args []string) (j Join, finishedFirst bool) {
	b.Helper()
	cpu, _ := cpuModel()
	m := benchMachine(b, guest, args)
	m.Config.RAMSize = ram
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), pairTimeout)
	defer cancel()
	started := make(chan struct{})
	var prep *Report
	var perr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		prep, perr = RunPrimary(ctx, PrimaryOptions{Options: Options{Machine: m, Sink: NewPlainSink(io.Discard), CPU: cpu,
			FailureTimeout: quietLinkTimeout, OnStart: func() { close(started) }}, Listener: ln, Mode: epoch.Bounded, MaxLag: 4})
	}()
	<-started
	brep, berr := RunBackup(ctx, BackupOptions{Options: Options{Machine: m, Sink: NewPlainSink(io.Discard), CPU: cpu,
		FailureTimeout: quietLinkTimeout}, Primary: ln.Addr().String(), Join: true})
	wg.Wait()
	if perr == nil && berr != nil && prep != nil && len(prep.Joins) == 0 {
		return Join{}, true
	}
	if perr != nil || berr != nil {
		b.Fatalf("join: primary %v, backup %v", perr, berr)
	}
	if len(prep.Joins) != 1 || len(brep.Joins) != 1 || !brep.Joins[0].Verified || prep.FinalHash != brep.FinalHash {
		b.Fatalf("join: joins %+v / %+v, final hashes %s / %s", prep.Joins, brep.Joins, prep.FinalHash, brep.FinalHash)
	}
	return prep.Joins[0], false
}

// BenchmarkConsoleFlood: a guest that does nothing but print (misbehave
// flood, one OUT per console byte) for 400 epochs, run by a primary alone
// (outputs through the protocol and the outbox) against the same machine
// unreplicated (the live environment writing its console itself), as the
// median of 5 runs of each, interleaved. Reported: primary/alone. The
// outbox's first version, a wake of its goroutine per byte, made this 2.
func BenchmarkConsoleFlood(b *testing.B) {
	mach := benchMachine(b, "misbehave", []string{"flood"})
	cpu, err := cpuModel()
	if err != nil {
		b.Fatal(err)
	}
	const epochs = 400
	alone := func() time.Duration {
		r, err := RunAlone(context.Background(), mach, vm.LiveConfig{CPU: cpu, Console: io.Discard}, vm.RunOptions{MaxEpochs: epochs}, nil)
		if err != nil && !vm.StoppedByGuest(r.Result, err) {
			b.Fatal(err)
		}
		return r.Elapsed
	}
	primary := func() time.Duration {
		start := time.Now()
		_, err := RunPrimary(context.Background(), PrimaryOptions{Options: Options{Machine: mach, Sink: NewPlainSink(io.Discard), CPU: cpu, MaxEpochs: epochs}})
		if err != nil && !strings.Contains(err.Error(), "epoch") {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	for i := 0; i < b.N; i++ {
		var a, p []float64
		for rep := 0; rep < 5; rep++ {
			a = append(a, alone().Seconds())
			p = append(p, primary().Seconds())
		}
		b.ReportMetric(medianOf(p)/medianOf(a), "primary/alone")
		b.ReportMetric(medianOf(a)*1000, "alone-ms")
	}
}

func medianOf(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[len(s)/2]
}
