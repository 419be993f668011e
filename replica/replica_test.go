package replica

import (
	"os"

	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"go.uber.org/zap"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"hvft/epoch"
	"hvft/guests"
	"hvft/vm"
	"hvft/vm/guestelf"
	"hvft/vm/tlb"
)

const pairTimeout = 2 * time.Minute

var cpuModel = sync.OnceValues(vm.ProbeCPUModel)

func machine(t testing.TB, name string, args []string, tlbCfg tlb.Config) Machine {
	t.Helper()
	data, ok := guests.Builtin(name)
	if !ok {
		t.Fatalf("no guest %s", name)
	}
	img, err := guestelf.Parse(data, vm.DefaultRAMSize, vm.ImageMinAddr)
	if err != nil {
		t.Fatal(err)
	}
	return Machine{Image: img, EpochBlocks: 20_000, Config: vm.Config{RAMSize: vm.DefaultRAMSize, TLB: tlbCfg, Args: append([]string{name}, args...)}}
}

// quietLinkTimeout is the failure timeout of tests that do not test the
// failure detector: a silence this long on loopback means a dead peer,
// not a loaded machine (500 ms, the default, was exceeded under two
// parallel make test runs, failing a join by a false death).
const quietLinkTimeout = 5 * time.Second

type side struct {
	rep   *Report
	err   error
	out   bytes.Buffer
	trail []vm.Stop
}

type pairConfig struct {
	guest        string
	args         []string
	primaryTLB   tlb.Config
	backupTLB    tlb.Config
	mode         epoch.Mode
	epochBlocks  uint64 // 0: machine's default
	clock        vm.EpochClock
	maxEpochs    uint64 // both sides' epoch budget (0: none)
	mutateAnswer func(at vm.Point, port uint32, seq, v uint64) uint64
	// proxy, if set, stands between the replicas: it is given the
	// primary's address and returns the one the backup dials.
	proxy func(t *testing.T, target string) string
	// primarySink and backupSink, if set, wrap a side's console sink.
	primarySink func(Sink) Sink
	backupSink  func(Sink) Sink
	// arbiter, if set, gives each side its own connection to one
	// generation register (rule 7). Each side's holder name there is its
	// role and its side's address (holder).
	arbiter func() Generations
	// wrapArbiter, if set, wraps the arbiter of the side with role
	// ("primary" or "backup").
	wrapArbiter func(role string, g Generations) Generations
	// claimReadBack bounds both sides' read-back of a claim whose answer
	// was lost (0: the default).
	claimReadBack time.Duration
	// beforeBackup, if set, runs once the primary's listener is up and
	// before the backup starts, with the address the backup will dial.
	beforeBackup func(t *testing.T, addr string)
}

// runPair runs a primary and a backup in this process over a real loopback
// socket, each with its own TLB and jittered host timer.
func runPair(t *testing.T, c pairConfig) (p, b *side) {
	t.Helper()
	cpu, err := cpuModel()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), pairTimeout)
	defer cancel()
	p, b = &side{}, &side{}
	addr := ln.Addr().String()
	if c.proxy != nil {
		addr = c.proxy(t, addr)
	}
	opts := func(role string, s *side, tlbCfg tlb.Config) Options {
		m := machine(t, c.guest, c.args, tlbCfg)
		if c.epochBlocks != 0 {
			m.EpochBlocks = c.epochBlocks
		}
		m.Config.Clock = c.clock
		o := Options{Machine: m, Sink: NewPlainSink(&s.out), CPU: cpu, MaxEpochs: c.maxEpochs, FailureTimeout: quietLinkTimeout,
			TimerJitter: 200 * time.Microsecond, OnEpoch: func(st vm.Stop) { s.trail = append(s.trail, st) }}
		if c.arbiter != nil {
			o.Arbiter, o.Holder, o.claimReadBack = c.arbiter(), holder(role, s), c.claimReadBack
			if c.wrapArbiter != nil {
				o.Arbiter = c.wrapArbiter(role, o.Arbiter)
			}
			if os.Getenv("HVFT_TEST_LOG") != "" {
				o.Log, _ = zap.NewDevelopment()
			}
		}
		return o
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		o := opts("primary", p, c.primaryTLB)
		if c.primarySink != nil {
			o.Sink = c.primarySink(o.Sink)
		}
		p.rep, p.err = RunPrimary(ctx, PrimaryOptions{Options: o, Listener: ln, BackupWait: time.Minute, Mode: c.mode, MaxLag: 4})
	}()
	if c.beforeBackup != nil {
		c.beforeBackup(t, addr)
	}
	go func() {
		defer wg.Done()
		o := opts("backup", b, c.backupTLB)
		o.mutateAnswer = c.mutateAnswer
		if c.backupSink != nil {
			o.Sink = c.backupSink(o.Sink)
		}
		b.rep, b.err = RunBackup(ctx, BackupOptions{Options: o, Primary: addr})
	}()
	wg.Wait()
	if ctx.Err() != nil {
		t.Fatal("pair did not finish within its bound")
	}
	return p, b
}

// holder is the name of a side of runPair at its arbiter.
func holder(role string, s *side) string { return fmt.Sprintf("%s-%p", role, s) }

// TestPairReplicates: equal per-epoch hash trails and final hashes under
// different TLBs and jittered timers; different miss counts; the backup
// emitted nothing.
func TestPairReplicates(t *testing.T) {
	for _, c := range []pairConfig{
		{guest: "ticker", args: []string{"30", "2000"}, primaryTLB: tlb.Config{PageSize: 64 << 10, Entries: 32, Seed: 1}, backupTLB: tlb.Config{PageSize: 16 << 10, Entries: 4, Policy: tlb.FIFO, Seed: 2}},
		{guest: "tlbstress", args: []string{"4", "2"}, primaryTLB: tlb.Config{PageSize: 64 << 10, Entries: 8, Seed: 3}, backupTLB: tlb.Config{PageSize: 16 << 10, Entries: 64, Policy: tlb.LRU, Seed: 4}},
		{guest: "ticker", args: []string{"10", "2000"}, primaryTLB: tlb.Config{PageSize: 64 << 10, Entries: 32, Seed: 5}, backupTLB: tlb.Config{PageSize: 16 << 10, Entries: 4, Seed: 6}, mode: epoch.Strict},
		// The machine's determinism classes (vm/determinism_test.go).
		{guest: "smc", primaryTLB: tlb.Config{PageSize: 4 << 10, Entries: 4, Seed: 7}, backupTLB: tlb.Config{PageSize: 1 << 20, Entries: 64, Policy: tlb.LRU, Seed: 8}},
		{guest: "nestexc", args: []string{"3000"}, epochBlocks: 900, primaryTLB: tlb.Config{PageSize: 64 << 10, Entries: 32, Seed: 9}, backupTLB: tlb.Config{PageSize: 4 << 10, Entries: 4, Policy: tlb.FIFO, Seed: 10}},
		{guest: "stishadow", args: []string{"500"}, epochBlocks: 41, primaryTLB: tlb.Config{PageSize: 4 << 10, Entries: 4, Seed: 11}, backupTLB: tlb.Config{PageSize: 64 << 10, Entries: 32, Policy: tlb.LRU, Seed: 12}},
		{guest: "cpustate", args: []string{"5000"}, primaryTLB: tlb.Config{PageSize: 16 << 10, Entries: 8, Seed: 13}, backupTLB: tlb.Config{PageSize: 4 << 10, Entries: 4, Policy: tlb.FIFO, Seed: 14}},
	} {
		t.Run(c.guest+"-"+c.mode.String(), func(t *testing.T) {
			p, b := runPair(t, c)
			if p.err != nil || b.err != nil {
				t.Fatalf("primary: %v\nbackup: %v", p.err, b.err)
			}
			if len(p.trail) != len(b.trail) || len(p.trail) < 5 {
				t.Fatalf("primary ran %d epochs, backup %d", len(p.trail), len(b.trail))
			}
			for i := range p.trail {
				if p.trail[i].Hash != b.trail[i].Hash || p.trail[i].Clock != b.trail[i].Clock {
					t.Fatalf("epoch %d: primary %v backup %v", i+1, p.trail[i].Hash, b.trail[i].Hash)
				}
			}
			if p.rep.FinalHash != b.rep.FinalHash || *p.rep.ExitCode != 0 || *b.rep.ExitCode != 0 {
				t.Fatalf("final: primary %s exit %v, backup %s exit %v", p.rep.FinalHash, *p.rep.ExitCode, b.rep.FinalHash, *b.rep.ExitCode)
			}
			if p.rep.TLBMisses == b.rep.TLBMisses {
				t.Errorf("miss counts equal (%d): the TLBs did not differ", p.rep.TLBMisses)
			}
			if b.out.Len() != 0 || b.rep.OutputsEmitted != 0 || b.rep.BecamePrimary {
				t.Errorf("backup emitted %d bytes (%d outputs)", b.out.Len(), b.rep.OutputsEmitted)
			}
			// HashesCompared counts the primary's hashes compared with
			// the backup's (see TestBackupCountsOnlyRealComparisons).
			if b.rep.HashesCompared != uint64(len(b.trail)) {
				t.Errorf("backup compared %d hashes over %d epochs", b.rep.HashesCompared, len(b.trail))
			}
			if c.guest == "ticker" && strings.Count(p.out.String(), "tick ") != atoi(c.args[0]) {
				t.Errorf("primary console:\n%s", p.out.String())
			}
			if c.guest != "ticker" && c.guest != "tlbstress" && !strings.Contains(p.out.String(), c.guest+" ok\n") {
				t.Errorf("the guest's own check failed:\n%s", p.out.String())
			}
			t.Logf("%d epochs, misses primary %d backup %d, log %d bytes", len(p.trail), p.rep.TLBMisses, b.rep.TLBMisses, p.rep.LogBytes)
		})
	}
}

// TestPairReplicatesAdaptive: with the adaptive epoch clock, quiet epochs
// run on the backup beside the primary's (rule 4a) and still end at the
// same points with equal hashes, under different TLBs; a guest that arms
// its timer switches to counted epochs on both sides alike.
func TestPairReplicatesAdaptive(t *testing.T) {
	for _, c := range []pairConfig{
		{guest: "cpustate", args: []string{"5000"}, primaryTLB: tlb.Config{PageSize: 16 << 10, Entries: 8, Seed: 13}, backupTLB: tlb.Config{PageSize: 4 << 10, Entries: 4, Policy: tlb.FIFO, Seed: 14}},
		{guest: "smc", primaryTLB: tlb.Config{PageSize: 4 << 10, Entries: 4, Seed: 7}, backupTLB: tlb.Config{PageSize: 1 << 20, Entries: 64, Policy: tlb.LRU, Seed: 8}},
		{guest: "tlbstress", args: []string{"4", "2"}, primaryTLB: tlb.Config{PageSize: 64 << 10, Entries: 8, Seed: 3}, backupTLB: tlb.Config{PageSize: 16 << 10, Entries: 64, Policy: tlb.LRU, Seed: 4}, mode: epoch.Strict},
		{guest: "ticker", args: []string{"20", "2000"}, primaryTLB: tlb.Config{PageSize: 64 << 10, Entries: 32, Seed: 1}, backupTLB: tlb.Config{PageSize: 16 << 10, Entries: 4, Policy: tlb.FIFO, Seed: 2}},
		{guest: "stishadow", args: []string{"500"}, epochBlocks: 41, primaryTLB: tlb.Config{PageSize: 4 << 10, Entries: 4, Seed: 11}, backupTLB: tlb.Config{PageSize: 64 << 10, Entries: 32, Policy: tlb.LRU, Seed: 12}},
	} {
		c.clock = vm.ClockAdaptive
		t.Run(c.guest+"-"+c.mode.String(), func(t *testing.T) {
			p, b := runPair(t, c)
			if p.err != nil || b.err != nil {
				t.Fatalf("primary: %v\nbackup: %v", p.err, b.err)
			}
			if len(p.trail) != len(b.trail) || len(p.trail) == 0 {
				t.Fatalf("primary ran %d epochs, backup %d", len(p.trail), len(b.trail))
			}
			for i := range p.trail {
				if p.trail[i].Hash != b.trail[i].Hash || p.trail[i].Clock != b.trail[i].Clock || p.trail[i].Reason != b.trail[i].Reason {
					t.Fatalf("epoch %d: primary %v %v backup %v %v", i+1, p.trail[i].Reason, p.trail[i].Hash, b.trail[i].Reason, b.trail[i].Hash)
				}
			}
			if p.rep.FinalHash != b.rep.FinalHash || *p.rep.ExitCode != 0 || *b.rep.ExitCode != 0 {
				t.Fatalf("final: primary %s exit %v, backup %s exit %v", p.rep.FinalHash, *p.rep.ExitCode, b.rep.FinalHash, *b.rep.ExitCode)
			}
			if p.rep.QuietEpochs == 0 || p.rep.QuietEpochs != b.rep.QuietEpochs {
				t.Errorf("quiet epochs: primary %d, backup %d", p.rep.QuietEpochs, b.rep.QuietEpochs)
			}
			// The ticker arms its timer: from then on every epoch counts.
			if c.guest == "ticker" && p.rep.QuietEpochs*2 > p.rep.Epochs {
				t.Errorf("ticker: %d of %d epochs quiet", p.rep.QuietEpochs, p.rep.Epochs)
			}
			if b.rep.HashesCompared != uint64(len(b.trail)) || b.out.Len() != 0 {
				t.Errorf("backup compared %d hashes over %d epochs, emitted %d bytes", b.rep.HashesCompared, len(b.trail), b.out.Len())
			}
			if c.guest == "ticker" && strings.Count(p.out.String(), "tick ") != atoi(c.args[0]) {
				t.Errorf("primary console:\n%s", p.out.String())
			}
			if c.guest != "ticker" && c.guest != "tlbstress" && !strings.Contains(p.out.String(), c.guest+" ok\n") {
				t.Errorf("the guest's own check failed:\n%s", p.out.String())
			}
			t.Logf("%d epochs (%d quiet), misses primary %d backup %d", len(p.trail), p.rep.QuietEpochs, p.rep.TLBMisses, b.rep.TLBMisses)
		})
	}
}

func atoi(s string) int {
	n := 0
	for _, c := range s {
		n = n*10 + int(c-'0')
	}
	return n
}

// TestBackupAnsweringFromItsOwnHostIsCaught is the negative control: a
// backup that answers one clock read from its own host diverges, is caught
// at that epoch, reports it to the primary and stops; the primary goes on
// alone to the guest's power-off, then fails naming the divergence.
func TestBackupAnsweringFromItsOwnHostIsCaught(t *testing.T) {
	var mu sync.Mutex
	var badAt vm.Point
	bad := false
	c := pairConfig{guest: "ticker", args: []string{"10", "2000"},
		primaryTLB: tlb.Config{PageSize: 64 << 10, Entries: 32, Seed: 1}, backupTLB: tlb.Config{PageSize: 64 << 10, Entries: 32, Seed: 2},
		mutateAnswer: func(at vm.Point, port uint32, seq, v uint64) uint64 {
			mu.Lock()
			defer mu.Unlock()
			if bad || seq < 9 || port != vm.PortClockLo {
				return v
			}
			bad, badAt = true, at
			return v + uint64(time.Now().UnixNano()%1000) + 1 // this host's own clock
		}}
	p, b := runPair(t, c)
	var div *vm.DivergenceError
	if !errors.As(b.err, &div) {
		t.Fatalf("backup error %v, want a divergence", b.err)
	}
	if div.At.Epoch != badAt.Epoch {
		t.Errorf("caught at epoch %d; the altered clock read was in epoch %d", div.At.Epoch, badAt.Epoch)
	}
	wantPrimaryFailedOnDivergence(t, p)
	if p.rep.BackupLost == "" {
		t.Errorf("primary report: backup lost %q", p.rep.BackupLost)
	}
	if strings.Count(p.out.String(), "tick ") != 10 {
		t.Errorf("the primary did not go on alone to the end:\n%s", p.out.String())
	}
	if b.rep.Divergence == "" || b.rep.BecamePrimary || b.rep.OutputsEmitted != 0 {
		t.Errorf("backup report %+v: a diverged backup must stop, not take over", b.rep)
	}
	t.Logf("caught: %v; primary: %v", div, p.err)
}

// wantPrimaryFailedOnDivergence: a primary whose backup diverged goes on
// alone to the guest's power-off, then fails with an error that names the
// divergence (hvft exits 125 on it); the report keeps the guest's exit code.
func wantPrimaryFailedOnDivergence(t *testing.T, p *side) {
	t.Helper()
	if p.rep == nil {
		t.Fatalf("primary: %v, and no report", p.err)
	}
	if !errors.Is(p.err, ErrBackupDiverged) || p.rep.Divergence == "" || !strings.Contains(p.err.Error(), p.rep.Divergence) {
		t.Fatalf("primary error %v, report divergence %q: want an error naming the backup's divergence", p.err, p.rep.Divergence)
	}
	if p.rep.ExitCode == nil || *p.rep.ExitCode != 0 || p.rep.Error != p.err.Error() {
		t.Errorf("primary report: exit code %v, error %q; want the guest's 0 and the error", p.rep.ExitCode, p.rep.Error)
	}
}

// TestBackupEndingDifferentlyFailsThePrimary: a backup whose goodbye
// names another final hash than the primary's diverged at the end of the
// run (Primary.Verdict); the primary fails on it as on a divergence
// reported mid-run.
func TestBackupEndingDifferentlyFailsThePrimary(t *testing.T) {
	p, b := runPair(t, pairConfig{guest: "ticker", args: []string{"10", "2000"},
		primaryTLB: tlb.Config{PageSize: 64 << 10, Entries: 32, Seed: 1}, backupTLB: tlb.Config{PageSize: 16 << 10, Entries: 8, Seed: 2},
		proxy: byeProxy(func(g *epoch.Goodbye) { g.Hash[0] ^= 1 })})
	if b.err != nil {
		t.Fatalf("backup: %v", b.err)
	}
	wantPrimaryFailedOnDivergence(t, p)
	if !strings.Contains(p.err.Error(), "final hash") || p.rep.BackupLost != "" {
		t.Errorf("primary: %v, backup lost %q; want the verdict's divergence, not a lost backup", p.err, p.rep.BackupLost)
	}
}

// copyFrames copies the frames read from src to dst until src ends,
// re-encoding each message edit changed (edit returns true): a fresh
// checksum, what a replica that sent it would send.
func copyFrames(t *testing.T, dst io.Writer, src io.Reader, edit func(*epoch.Message) bool) {
	r := bufio.NewReader(src)
	for {
		var hdr [4]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return
		}
		body := make([]byte, binary.LittleEndian.Uint32(hdr[:]))
		if _, err := io.ReadFull(r, body); err != nil {
			return
		}
		out := append(hdr[:], body...)
		if m, err := epoch.DecodeFrame(body); err == nil && edit(&m) {
			if out, err = epoch.AppendFrame(nil, m); err != nil {
				t.Error(err)
				return
			}
		}
		if _, err := dst.Write(out); err != nil {
			return
		}
	}
}

// byeProxy forwards a connection, passing the backup's goodbye through
// edit; every other frame passes as it came.
func byeProxy(edit func(*epoch.Goodbye)) func(t *testing.T, target string) string {
	return func(t *testing.T, target string) string {
		return relay(t, target, func(c, s net.Conn) {
			done := make(chan struct{})
			go func() { io.Copy(c, s); c.(*net.TCPConn).CloseWrite(); close(done) }()
			defer func() { s.(*net.TCPConn).CloseWrite(); <-done; c.Close(); s.Close() }()
			copyFrames(t, s, c, func(m *epoch.Message) bool {
				if m.Type != epoch.TypeGoodbye {
					return false
				}
				edit(m.Goodbye)
				return true
			})
		})
	}
}

// endProxy forwards a connection, passing every epoch end the primary
// sends through edit and re-encoding it (a fresh checksum: what a primary
// that sent it would send); every other frame passes as it came.
func endProxy(edit func(*epoch.EpochEnd)) func(t *testing.T, target string) string {
	return func(t *testing.T, target string) string {
		return relay(t, target, func(c, s net.Conn) {
			// The backup's last words (its divergence) must reach the
			// primary: the backup-to-primary copy runs to the end of
			// what the backup sent, whatever stops the other direction.
			done := make(chan struct{})
			go func() { io.Copy(s, c); s.(*net.TCPConn).CloseWrite(); close(done) }()
			defer func() { c.(*net.TCPConn).CloseWrite(); <-done; c.Close(); s.Close() }()
			copyFrames(t, c, s, func(m *epoch.Message) bool {
				if m.Type != epoch.TypeEpochEnd {
					return false
				}
				edit(m.EpochEnd)
				return true
			})
		})
	}
}

// TestBackupCountsOnlyRealComparisons: HashesCompared counts the primary's
// state hashes the backup compared with its own and found equal, not the
// backup's own hashes. An epoch end from the primary that carries no hash
// cannot be compared: the backup stops on it as on a divergence, having
// compared the epochs before it, and tells the primary.
func TestBackupCountsOnlyRealComparisons(t *testing.T) {
	const stripped = 3
	p, b := runPair(t, pairConfig{guest: "ticker", args: []string{"10", "2000"},
		primaryTLB: tlb.Config{PageSize: 64 << 10, Entries: 32, Seed: 1}, backupTLB: tlb.Config{PageSize: 16 << 10, Entries: 8, Seed: 2},
		proxy: endProxy(func(e *epoch.EpochEnd) {
			if e.Epoch == stripped {
				e.Hash = [16]byte{}
			}
		})})
	var div *vm.DivergenceError
	if !errors.As(b.err, &div) || div.At.Epoch != stripped {
		t.Fatalf("backup error %v (report %+v), want a divergence at epoch %d, whose hash the primary did not send", b.err, b.rep, stripped)
	}
	if b.rep.HashesCompared != stripped-1 || b.rep.Divergence == "" || b.rep.BecamePrimary {
		t.Errorf("backup report: %d hashes compared (want %d), divergence %q, became primary %v",
			b.rep.HashesCompared, stripped-1, b.rep.Divergence, b.rep.BecamePrimary)
	}
	wantPrimaryFailedOnDivergence(t, p)
}

// TestRdtscDiverges: the rdtsc guest reads host cycles the hypervisor
// cannot trap; the replicas' states differ and the hash comparison says
// where.
func TestRdtscDiverges(t *testing.T) {
	p, b := runPair(t, pairConfig{guest: "rdtsc", primaryTLB: tlb.Config{PageSize: 64 << 10, Entries: 32, Seed: 1}, backupTLB: tlb.Config{PageSize: 64 << 10, Entries: 32, Seed: 1}})
	var div *vm.DivergenceError
	if !errors.As(b.err, &div) {
		t.Fatalf("backup error %v, want a divergence", b.err)
	}
	if div.At.Epoch != uint64(len(b.trail))+1 || div.At.Clock == 0 || div.At.RIP == 0 {
		t.Errorf("divergence %v after %d good epochs", div, len(b.trail))
	}
	wantPrimaryFailedOnDivergence(t, p)
	if b.rep.BecamePrimary || b.rep.OutputsEmitted != 0 {
		t.Errorf("backup took over %v, emitted %d", b.rep.BecamePrimary, b.rep.OutputsEmitted)
	}
}

// TestRdtscInRAMDiverges: rdtscram keeps an RDTSC value only in RAM; the
// backup reports the divergence long before the guest prints it, without
// taking over or emitting anything (vm's TestRdtscInRAMIsCaughtInItsEpoch
// pins the epoch).
func TestRdtscInRAMDiverges(t *testing.T) {
	cfg := tlb.Config{PageSize: 64 << 10, Entries: 32, Seed: 1}
	p, b := runPair(t, pairConfig{guest: "rdtscram", args: []string{"4000000"}, primaryTLB: cfg, backupTLB: cfg})
	var div *vm.DivergenceError
	if !errors.As(b.err, &div) {
		t.Fatalf("backup error %v, want a divergence", b.err)
	}
	wantPrimaryFailedOnDivergence(t, p)
	if uint64(len(p.trail)) < 10*div.At.Epoch {
		t.Fatalf("primary ran %d epochs; divergence at epoch %d (want it in the first tenth of the run)", len(p.trail), div.At.Epoch)
	}
	if b.rep.BecamePrimary || b.rep.OutputsEmitted != 0 {
		t.Errorf("backup took over %v, emitted %d", b.rep.BecamePrimary, b.rep.OutputsEmitted)
	}
}

// TestStoppedRunIsNotTakenOver: a guest that floods the console until the
// epoch budget stops the primary; the primary drains, says goodbye with
// the reason, and the backup replays to the same stop and ends there with
// the same final hash, emitting nothing. (Before, the primary just closed
// the link, and a backup that lagged took over and wrote the flood.)
func TestStoppedRunIsNotTakenOver(t *testing.T) {
	cfg := tlb.Config{PageSize: 64 << 10, Entries: 32, Seed: 1}
	p, b := runPair(t, pairConfig{guest: "misbehave", args: []string{"flood"}, maxEpochs: 30, primaryTLB: cfg, backupTLB: tlb.Config{PageSize: 4 << 10, Entries: 4, Seed: 2}})
	if !errors.Is(p.err, vm.ErrMaxEpochs) || !errors.Is(b.err, vm.ErrMaxEpochs) {
		t.Fatalf("primary %v, backup %v; want both stopped by the epoch budget", p.err, b.err)
	}
	if b.rep.BecamePrimary || b.rep.OutputsEmitted != 0 || b.out.Len() != 0 {
		t.Fatalf("backup took over %v, emitted %d outputs", b.rep.BecamePrimary, b.rep.OutputsEmitted)
	}
	if p.rep.BackupFinalHash == "" || p.rep.BackupFinalHash != p.rep.FinalHash || p.rep.Divergence != "" {
		t.Fatalf("primary: backup's final hash %q, own %q, divergence %q", p.rep.BackupFinalHash, p.rep.FinalHash, p.rep.Divergence)
	}
	if len(p.trail) != 30 || len(b.trail) != 30 {
		t.Fatalf("%d and %d epochs, want 30", len(p.trail), len(b.trail))
	}
}

// TestJoinCarriesCPUState: a backup joins a primary running cpustate
// (MSRs, swapgs, debug registers, x87 and SSE state rewritten every
// iteration, waiting for the timer between iterations): the joined state
// verifies and both end on the same final hash. The first version's
// snapshot left the MSRs and debug registers out, and a joined backup
// diverged a few epochs after "state hash verified".
func TestJoinCarriesCPUState(t *testing.T) {
	joinOnce(t, 16<<20, "cpustate", []string{"ticks", "1500", "500"})
}

// TestJoinInProcess: a backup joins a primary that runs ramwriter alone;
// the joined state is verified by hash, the pages written during the
// pre-copy are re-sent, and both end on the same final hash (joinOnce
// checks those). Run under -race too: the pre-copy reads RAM beside the
// running guest.
func TestJoinInProcess(t *testing.T) {
	j := joinOnce(t, 16<<20, "ramwriter", []string{"2", "100"})
	if j.DirtyBytes == 0 || j.Bytes < 16<<20 || j.PauseMS <= 0 {
		t.Errorf("join %+v: the guest wrote during the pre-copy, so pages must be re-sent", j)
	}
}

// TestJoinDetectsASilentPrimary: a primary that stops in the middle of a
// state transfer (here a fake one that sends one piece of RAM and then
// nothing, holding the connection open) is declared dead by the joiner's
// failure detector; before, the joiner waited for ever.
func TestJoinDetectsASilentPrimary(t *testing.T) {
	m := machine(t, "ticker", nil, tlb.Config{PageSize: 64 << 10, Entries: 32, Seed: 1})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), pairTimeout)
	defer cancel()
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		l := newLink(conn)
		if hello, err := l.Recv(); err != nil || hello.Type != epoch.TypeHello || !hello.Hello.Join {
			return
		}
		l.Send(epoch.Message{Type: epoch.TypeWelcome, Welcome: &epoch.Welcome{Accepted: true}},
			epoch.Message{Type: epoch.TypeJoinRAM, JoinRAM: &epoch.JoinRAM{Offset: 0, Data: make([]byte, 4096)}})
		<-ctx.Done() // stopped: says nothing, closes nothing
	}()
	_, err = RunBackup(ctx, BackupOptions{Options: Options{Machine: m, Sink: NewPlainSink(io.Discard),
		Heartbeat: 20 * time.Millisecond, FailureTimeout: 200 * time.Millisecond}, Primary: ln.Addr().String(), Join: true})
	if ctx.Err() != nil {
		t.Fatal("the joiner was still waiting when the test's bound ran out")
	}
	if err == nil || !strings.Contains(err.Error(), "went silent during the state transfer") {
		t.Fatalf("joiner: %v, want the primary declared silent", err)
	}
}

// failingSink passes outputs to a sink until it has taken budget of them,
// then fails every Emit.
type failingSink struct {
	Sink
	budget int
}

func (f *failingSink) Emit(outs []epoch.Output) error {
	if f.budget < len(outs) {
		if err := f.Sink.Emit(outs[:f.budget]); err != nil {
			return err
		}
		f.budget = 0
		return errors.New("disk full")
	}
	f.budget -= len(outs)
	return f.Sink.Emit(outs)
}

// TestFailingSinkHandsOverToTheBackup: a primary whose console sink fails
// sends no release watermark for what the sink did not take, and stops;
// the backup takes over and emits the rest. Together the two consoles hold
// the whole output: nothing is lost (before, the primary ran on, its
// watermark told the backup the outputs had left, and they were gone).
func TestFailingSinkHandsOverToTheBackup(t *testing.T) {
	tl := tlb.Config{PageSize: 64 << 10, Entries: 32, Seed: 1}
	p, b := runPair(t, pairConfig{guest: "ticker", args: []string{"20", "1000"}, primaryTLB: tl, backupTLB: tl,
		primarySink: func(s Sink) Sink { return &failingSink{Sink: s, budget: 100} }})
	if p.err == nil || !strings.Contains(p.err.Error(), "console sink failed") {
		t.Fatalf("primary: %v, want the sink's failure", p.err)
	}
	if b.err != nil || b.rep == nil || !b.rep.BecamePrimary {
		t.Fatalf("backup: %v (report %+v), want it to take over", b.err, b.rep)
	}
	// The backup re-emits from its last release watermark, which may lie
	// before the end of what the primary's sink took (a shared sink drops
	// the repeats by sequence number): the backup's console must go on
	// from some byte of the primary's, and the two together be the run.
	got, rest := p.out.String(), b.out.String()
	whole, ok := mergeConsoles(got, rest)
	if !ok || !strings.Contains(rest, "tick 20 ") {
		t.Fatalf("the backup's console does not go on from the primary's:\nprimary %q\nbackup %q", got, rest)
	}
	if err := guests.CheckTicker(whole, 20); err != nil {
		t.Fatalf("the two consoles together: %v\nprimary %q\nbackup %q", err, got, rest)
	}
}

// TestIdlePeersDoNotDelayTheBackup: three peers connect to the primary
// and say nothing. Each handshake runs on its own, so the real backup is
// paired at once; before, the primary served them one at a time, 5 s
// each, and the backup's own handshake timed out with a message blaming
// the key.
func TestIdlePeersDoNotDelayTheBackup(t *testing.T) {
	var idle []net.Conn
	defer func() {
		for _, c := range idle {
			c.Close()
		}
	}()
	cfg := tlb.Config{PageSize: 64 << 10, Entries: 32, Seed: 1}
	p, b := runPair(t, pairConfig{guest: "ticker", args: []string{"5", "1000"}, primaryTLB: cfg, backupTLB: cfg, beforeBackup: func(t *testing.T, addr string) {
		for range 3 {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			idle = append(idle, c)
		}
	}})
	if p.err != nil || b.err != nil {
		t.Fatalf("primary: %v; backup: %v", p.err, b.err)
	}
	if p.rep.BackupLost != "" || strings.Count(p.out.String(), "tick") != 5 {
		t.Fatalf("backup lost %q; primary console %q", p.rep.BackupLost, p.out.String())
	}
}

// TestBackupThatGaveUpIsNotTaken: a peer sends a matching Hello, reads
// the Welcome and leaves without confirming (a backup that gave up
// waiting). The primary must not take it for its backup: the real backup
// that comes next is paired, and no backup is lost. Before, the primary
// ran with the departed peer, lost it at once, went on alone and refused
// the real backup ("start the backup with --join").
func TestBackupThatGaveUpIsNotTaken(t *testing.T) {
	cfg := tlb.Config{PageSize: 64 << 10, Entries: 32, Seed: 1}
	m := machine(t, "ticker", []string{"5", "1000"}, cfg)
	p, b := runPair(t, pairConfig{guest: "ticker", args: []string{"5", "1000"}, primaryTLB: cfg, backupTLB: cfg, beforeBackup: func(t *testing.T, addr string) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		hello, _ := epoch.AppendFrame(nil, epoch.Message{Type: epoch.TypeHello, Hello: &epoch.Hello{Config: m.wireConfig()}})
		if _, err := c.Write(hello); err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(time.Minute))
		w, err := epoch.ReadFrame(bufio.NewReader(c))
		if err != nil || w.Type != epoch.TypeWelcome || !w.Welcome.Accepted {
			t.Fatalf("the departing peer's welcome: %+v, %v", w, err)
		}
	}})
	if p.err != nil || b.err != nil {
		t.Fatalf("primary: %v; backup: %v", p.err, b.err)
	}
	if p.rep.BackupLost != "" || b.rep.Failover != nil {
		t.Fatalf("the primary lost a backup (%q) or the backup took over: the departed peer was taken", p.rep.BackupLost)
	}
}

// unflushableSink takes outputs but fails every flush.
type unflushableSink struct{ Sink }

func (unflushableSink) Flush() error { return errors.New("the pipe is closed") }

// TestTakeoverFailsWhenItsSinkCannotFlush: a backup that took over
// (its primary's sink failed) and whose own console cannot be flushed
// fails at its first boundary, with an error that says it was the flush
// (the per-epoch flush's error used to be dropped, and the run failed
// later, at its end, with the sink's bare message).
func TestTakeoverFailsWhenItsSinkCannotFlush(t *testing.T) {
	tl := tlb.Config{PageSize: 64 << 10, Entries: 32, Seed: 1}
	_, b := runPair(t, pairConfig{guest: "ticker", args: []string{"20", "1000"}, primaryTLB: tl, backupTLB: tl,
		primarySink: func(s Sink) Sink { return &failingSink{Sink: s, budget: 100} },
		backupSink:  func(s Sink) Sink { return unflushableSink{s} }})
	if b.err == nil || !strings.Contains(b.err.Error(), "flushing the console") || b.rep == nil || !b.rep.BecamePrimary {
		t.Fatalf("backup: %v (report %+v), want the takeover to fail on its flush", b.err, b.rep)
	}
}
