package replica

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"hvft/vm"

	"hvft/epoch"
	"hvft/guests"
	"hvft/vm/tlb"
)

// recordingSink keeps what a replica emitted, by sequence number. Its
// kill hook runs right after the output it was waiting for is kept: a crash
// at that instant, with nothing emitted after it.
type recordingSink struct {
	mu     sync.Mutex
	got    map[uint64]byte
	frozen bool
	killAt uint64
	kill   func()
}

func (s *recordingSink) Emit(outs []epoch.Output) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, o := range outs {
		if s.frozen {
			return nil
		}
		s.got[o.Seq] = byte(o.Value)
		if s.killAt != 0 && o.Seq >= s.killAt {
			s.frozen = true
			s.kill()
		}
	}
	return nil
}
func (s *recordingSink) Progress(uint64) error { return nil }
func (s *recordingSink) Flush() error          { return nil }

// connListener remembers the connection it accepted, so a test can cut it.
type connListener struct {
	net.Listener
	mu   sync.Mutex
	conn net.Conn
}

func (l *connListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	l.mu.Lock()
	l.conn = c
	l.mu.Unlock()
	return c, err
}

func (l *connListener) cut() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn != nil {
		l.conn.Close()
	}
}

// TestFailoverAtRandomInstants crashes the primary right after a random
// output left it (its link cut, nothing emitted after), in both protocols,
// and requires the two sinks together to hold every ticker line exactly
// once, in order, with valid checksums and a clock that never runs
// backwards (TestPairReplicates shows a backup that never takes over emits
// nothing).
func TestFailoverAtRandomInstants(t *testing.T) {
	failoverAtRandomInstants(t, "ticker", []string{"30", "1000"}, vm.ClockAlways, 30*50, func(t *testing.T, console, img string) error {
		return guests.CheckTicker(console, 30)
	})
}

// TestDiskFailoverAtRandomInstants does the same with diskkv on a shared
// disk image: every acknowledged put is on the console once and in the
// image, which a cold boot verifies.
func TestDiskFailoverAtRandomInstants(t *testing.T) {
	const puts = 40
	diskFailover(t, vm.ClockAlways)
}

// TestAdaptiveClockFailoverAtRandomInstants repeats both with the adaptive
// epoch clock, and adds a guest whose epochs are all quiet, so that the
// primary dies while the backup runs beside it (rule 4a): ramwriter's
// lines are a function of its arguments.
func TestAdaptiveClockFailoverAtRandomInstants(t *testing.T) {
	t.Run("ticker", func(t *testing.T) {
		failoverAtRandomInstants(t, "ticker", []string{"30", "1000"}, vm.ClockAdaptive, 30*50, func(t *testing.T, console, img string) error {
			return guests.CheckTicker(console, 30)
		})
	})
	t.Run("diskkv", func(t *testing.T) { diskFailover(t, vm.ClockAdaptive) })
	t.Run("ramwriter", func(t *testing.T) {
		var want bytes.Buffer
		cpu, _ := cpuModel()
		args := []string{"1", "200"}
		r, err := RunAlone(context.Background(), machine(t, "ramwriter", args, tlb.Config{PageSize: 64 << 10, Entries: 32, Seed: 1}), vm.LiveConfig{Console: &want, CPU: cpu}, vm.RunOptions{}, nil)
		if err != nil || r.Result.ExitCode != 0 {
			t.Fatalf("reference run: exit %d, %v", r.Result.ExitCode, err)
		}
		failoverAtRandomInstants(t, "ramwriter", args, vm.ClockAdaptive, want.Len(), func(t *testing.T, console, img string) error {
			if console != want.String() {
				return fmt.Errorf("console %q, want %q", console, want.String())
			}
			return nil
		})
	})
}

func diskFailover(t *testing.T, clock vm.EpochClock) {
	const puts = 40
	failoverAtRandomInstants(t, "diskkv", []string{"run", "40", "9", "4"}, clock, puts*28, func(t *testing.T, console, img string) error {
		next := 1
		for _, line := range strings.Split(console, "\n") {
			if strings.HasPrefix(line, "put ") {
				if !strings.HasPrefix(line, fmt.Sprintf("put %d ", next)) {
					return fmt.Errorf("%q where put %d was due", line, next)
				}
				next++
			}
		}
		if next != puts+1 {
			return fmt.Errorf("%d puts acknowledged, want %d", next-1, puts)
		}
		if !strings.Contains(console, fmt.Sprintf("diskkv done records=%d", puts)) {
			return fmt.Errorf("no final line")
		}
		verify := coldBoot(t, img)
		for _, line := range strings.Split(console, "\n") {
			if seq, kv, ok := strings.Cut(strings.TrimPrefix(line, "put "), " "); ok && strings.HasPrefix(line, "put ") {
				if !strings.Contains(verify, "rec "+seq+" "+kv+"\n") {
					return fmt.Errorf("acknowledged put %s %s missing from the image", seq, kv)
				}
			}
		}
		return nil
	})
}

// coldBoot runs diskkv verify on an image and returns its console.
func coldBoot(t *testing.T, img string) string {
	t.Helper()
	mach := machine(t, "diskkv", []string{"verify"}, tlb.Config{PageSize: 64 << 10, Entries: 32, Seed: 1})
	sectors, err := vm.DiskSectorsOf(img, 0)
	if err != nil {
		t.Fatal(err)
	}
	mach.DiskPath, mach.DiskSync, mach.Config.DiskSectors = img, vm.SyncNever, sectors
	var out bytes.Buffer
	cpu, _ := cpuModel()
	r, err := RunAlone(context.Background(), mach, vm.LiveConfig{Console: &out, CPU: cpu}, vm.RunOptions{MaxEpochs: 100000}, nil)
	if err != nil || r.Result.ExitCode != 0 {
		t.Fatalf("cold boot of %s: exit %d, %v\n%s", img, r.Result.ExitCode, err, out.String())
	}
	return out.String()
}

func failoverAtRandomInstants(t *testing.T, guest string, args []string, clock vm.EpochClock, maxOutputs int, check func(t *testing.T, console, img string) error) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 2))
	cpu, err := cpuModel()
	if err != nil {
		t.Fatal(err)
	}
	runs := 12
	if testing.Short() {
		runs = 4
	}
	for i := 0; i < runs; i++ {
		mode := epoch.Mode(i % 2)
		killAt := uint64(1 + rng.IntN(maxOutputs))
		ln0, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln := &connListener{Listener: ln0}
		ctx, cancel := context.WithTimeout(context.Background(), pairTimeout)
		pctx, killPrimary := context.WithCancel(ctx)
		ps := &recordingSink{got: map[uint64]byte{}, killAt: killAt, kill: func() { ln.cut(); killPrimary() }}
		bs := &recordingSink{got: map[uint64]byte{}}
		img := filepath.Join(t.TempDir(), "disk.img")
		sectors, err := vm.DiskSectorsOf(img, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		mach := func(tlbCfg tlb.Config) Machine {
			m := machine(t, guest, args, tlbCfg)
			m.Config.Clock = clock
			if guest == "diskkv" {
				m.DiskPath, m.Config.DiskSectors = img, sectors
			}
			return m
		}
		var wg sync.WaitGroup
		var brep *Report
		var berr error
		wg.Add(2)
		go func() {
			defer wg.Done()
			RunPrimary(pctx, PrimaryOptions{Options: Options{Machine: mach(tlb.Config{PageSize: 64 << 10, Entries: 32, Seed: 1}), Sink: ps, CPU: cpu},
				Listener: ln, BackupWait: time.Minute, Mode: mode, MaxLag: 4})
		}()
		go func() {
			defer wg.Done()
			brep, berr = RunBackup(ctx, BackupOptions{Options: Options{Machine: mach(tlb.Config{PageSize: 16 << 10, Entries: 8, Seed: 2}), Sink: bs, CPU: cpu}, Primary: ln0.Addr().String()})
		}()
		wg.Wait()
		timedOut := ctx.Err() != nil
		cancel()
		ln0.Close()
		if timedOut {
			t.Fatalf("run %d did not finish within its bound", i)
		}
		if berr != nil {
			t.Fatalf("run %d (%v, kill after output %d): backup: %v", i, mode, killAt, berr)
		}
		var console bytes.Buffer
		seqs := map[uint64]byte{}
		for s, v := range ps.got {
			seqs[s] = v
		}
		for s, v := range bs.got {
			if pv, ok := seqs[s]; ok && pv != v {
				t.Fatalf("run %d: output %d is %q from the primary, %q from the backup", i, s, pv, v)
			}
			seqs[s] = v
		}
		keys := make([]uint64, 0, len(seqs))
		for s := range seqs {
			keys = append(keys, s)
		}
		sort.Slice(keys, func(a, b int) bool { return keys[a] < keys[b] })
		for n, s := range keys {
			if s != uint64(n+1) {
				t.Fatalf("run %d (%v, kill after output %d): output %d missing", i, mode, killAt, n+1)
			}
			console.WriteByte(seqs[s])
		}
		if err := check(t, console.String(), img); err != nil {
			t.Fatalf("run %d (%v, kill after output %d): %v", i, mode, killAt, err)
		}
		took := brep.Failover != nil
		if killAt <= uint64(console.Len()) && !took {
			t.Errorf("run %d: the primary died after output %d but the backup never took over", i, killAt)
		}
		if took {
			t.Logf("run %d %v: killed after output %d; backup held %d epochs, had executed %d, re-emitted %d, uncertain %d, live at epoch %d",
				i, mode, killAt, brep.Failover.EpochsHeld, brep.Failover.EpochsExecuted, brep.Failover.Reemitted, brep.Failover.Uncertain, brep.Failover.LiveAtEpoch)
		}
	}
}
