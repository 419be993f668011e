package replica

import (
	"bytes"
	"context"
	"errors"
	"net"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"hvft/epoch"
	"hvft/guests"
	"hvft/vm/tlb"
)

func TestFileLease(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk.lease")
	// The TTL is long against the renewal period: on a loaded machine a
	// renewer starved for 100 ms let the lease expire (the lease's own
	// weakness, which rule 7's arbiter has not).
	a := &FileLease{Path: path, TTL: time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	g1, err := a.Acquire(ctx, "primary", false)
	if err != nil || g1 != 1 {
		t.Fatalf("first acquire: %d %v", g1, err)
	}
	// A holder that keeps renewing is alive: the other side must not take over.
	stop := make(chan struct{})
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
				a.Check(g1)
			}
		}
	}()
	if _, err := a.Acquire(ctx, "backup", true); !errors.Is(err, ErrLeaseHeld) {
		t.Fatalf("acquire against a live holder: %v", err)
	}
	close(stop)
	// Once it stops renewing, the lease expires and passes on, fencing it.
	g2, err := a.Acquire(ctx, "backup", true)
	if err != nil || g2 != g1+1 {
		t.Fatalf("acquire after expiry: %d %v", g2, err)
	}
	if err := a.Check(g1); !errors.Is(err, ErrFenced) {
		t.Fatalf("the old holder was not fenced: %v", err)
	}
	if err := a.Check(g2); err != nil {
		t.Fatal(err)
	}
	if err := a.Release(g2); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Acquire(ctx, "backup", true); !errors.Is(err, ErrRunFinished) {
		t.Fatalf("takeover of a finished run: %v", err)
	}
	if g3, err := a.Acquire(ctx, "primary", false); err != nil || g3 != g2+1 {
		t.Fatalf("a new run after release: %d %v", g3, err)
	}
}

// blackholeProxy forwards a connection both ways until n bytes came from
// the primary, then drops everything in both directions while keeping the
// connections open: a network partition between two live replicas.
func blackholeProxy(t *testing.T, target string, n int) string {
	var cut atomic.Bool
	return relay(t, target, func(c, s net.Conn) {
		t.Cleanup(func() { c.Close(); s.Close() })
		pipe := func(dst, src net.Conn, count bool) {
			buf := make([]byte, 4096)
			seen := 0
			for {
				k, err := src.Read(buf)
				if err != nil {
					return
				}
				if count {
					if seen += k; seen >= n {
						cut.Store(true)
					}
				}
				if !cut.Load() {
					dst.Write(buf[:k])
				}
			}
		}
		go pipe(s, c, false)
		go pipe(c, s, true)
	})
}

// TestPartitionLeavesExactlyOnePrimary: primary and backup stop hearing
// each other but both reach the lease. The backup tries to take over, finds
// the primary renewing its lease, and steps down; the primary goes on
// alone and finishes the run. Exactly one primary, and the console whole.
func TestPartitionLeavesExactlyOnePrimary(t *testing.T) {
	cpu, _ := cpuModel()
	m := machine(t, "ticker", []string{"250", "3000"}, tlb.Config{PageSize: 64 << 10, Entries: 32, Seed: 1})
	// A TTL long against the renewal: on a loaded machine a renewer starved
	// past 200 ms let the backup take the lease of a live primary (the
	// lease's weakness; rule 7's arbiter renews nothing).
	lease := &FileLease{Path: filepath.Join(t.TempDir(), "run.lease"), TTL: time.Second}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), pairTimeout)
	defer cancel()
	var pout, bout bytes.Buffer
	opts := func(out *bytes.Buffer, holder string) Options {
		return Options{Machine: m, Sink: NewPlainSink(out), CPU: cpu, Lease: lease, LeaseTTL: lease.TTL, Holder: holder,
			FailureTimeout: 300 * time.Millisecond}
	}
	var prep *Report
	var perr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		prep, perr = RunPrimary(ctx, PrimaryOptions{Options: opts(&pout, "primary"), Listener: ln, BackupWait: time.Minute, Mode: epoch.Bounded, MaxLag: 4})
	}()
	proxy := blackholeProxy(t, ln.Addr().String(), 3000)
	brep, berr := RunBackup(ctx, BackupOptions{Options: opts(&bout, "backup"), Primary: proxy})
	<-done
	if !(errors.Is(berr, ErrLeaseHeld) || errors.Is(berr, ErrRunFinished)) || brep.BecamePrimary || bout.Len() != 0 {
		t.Fatalf("backup: err %v, became primary %v, emitted %d bytes: it must step down", berr, brep.BecamePrimary, bout.Len())
	}
	t.Logf("backup stepped down: %v", berr)
	if perr != nil || prep.BackupLost == "" {
		t.Fatalf("primary: %v, backup lost %q", perr, prep.BackupLost)
	}
	if err := guests.CheckTicker(pout.String(), 250); err != nil {
		t.Fatalf("primary console: %v", err)
	}
}
