package replica

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"

	"hvft/epoch"
	"hvft/vm/tlb"
)

// flakyListener is a primary's listener whose first connections never
// reach the primary: bad(n, conn) serves the n-th (from 1) while n <=
// flaky, as a primary out of file descriptors leaves them, and the rest
// are the primary's. accepted counts them all; served waits for bad.
type flakyListener struct {
	net.Listener
	flaky    int64
	bad      func(n int64, c net.Conn)
	accepted atomic.Int64
	served   sync.WaitGroup
}

func (f *flakyListener) Accept() (net.Conn, error) {
	for {
		c, err := f.Listener.Accept()
		if err != nil {
			return nil, err
		}
		n := f.accepted.Add(1)
		if n > f.flaky {
			return c, nil
		}
		f.served.Add(1)
		go func() { defer f.served.Done(); f.bad(n, c) }()
	}
}

// TestJoinRetriesUntilThePrimaryAnswers: a joiner's first connections
// get no welcome: one is closed at once, one after the primary read its
// hello, one is left silent until the joiner's handshake times out. The
// joiner tries again each time (a growing pause between attempts, within
// --connect-timeout) and joins on the fourth. Before, it gave up at the
// first, and a primary out of file descriptors locked joiners out.
func TestJoinRetriesUntilThePrimaryAnswers(t *testing.T) {
	cpu, err := cpuModel()
	if err != nil {
		t.Fatal(err)
	}
	m := machine(t, "ticker", []string{"4000", "1000"}, tlb.Config{PageSize: 64 << 10, Entries: 32, Seed: 1})
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), pairTimeout)
	defer cancel()
	ln := &flakyListener{Listener: inner, flaky: 3, bad: func(n int64, c net.Conn) {
		defer c.Close()
		switch n {
		case 1: // closed before anything is read: EOF or a reset
		case 2: // the hello is read, then the connection closed
			newLink(c).Recv()
		case 3: // nothing said: the joiner's handshake times out
			<-ctx.Done()
		}
	}}
	defer ln.served.Wait()
	defer cancel() // ends the stalled connection before the wait for it
	defer ln.Close()
	started := make(chan struct{})
	var prep *Report
	var perr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		prep, perr = RunPrimary(ctx, PrimaryOptions{Options: Options{Machine: m, Sink: NewPlainSink(io.Discard), CPU: cpu,
			FailureTimeout: quietLinkTimeout, OnStart: func() { close(started) }}, Listener: ln, Mode: epoch.Bounded, MaxLag: 4})
	}()
	select {
	case <-started:
	case <-done:
		t.Fatalf("the primary ended before its guest started: %v", perr)
	}
	brep, berr := RunBackup(ctx, BackupOptions{Options: Options{Machine: m, Sink: NewPlainSink(io.Discard), CPU: cpu,
		FailureTimeout: quietLinkTimeout}, Primary: inner.Addr().String(), Join: true, ConnectTimeout: time.Minute,
		handshake: 300 * time.Millisecond})
	<-done
	if ctx.Err() != nil {
		t.Fatal("the join did not finish within the test's bound")
	}
	if berr != nil || perr != nil {
		t.Fatalf("joiner: %v; primary: %v", berr, perr)
	}
	if n := ln.accepted.Load(); n != 4 {
		t.Fatalf("the primary's listener took %d connections, want 3 that failed and the one that joined", n)
	}
	if len(brep.Joins) != 1 || !brep.Joins[0].Verified || len(prep.Joins) != 1 || brep.FinalHash != prep.FinalHash {
		t.Fatalf("joins %+v / %+v, final hashes %s / %s", prep.Joins, brep.Joins, prep.FinalHash, brep.FinalHash)
	}
}

// refusingPrimary answers every hello with a refusal and counts the
// connections it took; it stops when ctx ends.
func refusingPrimary(t *testing.T, ctx context.Context, reason string) (addr string, conns *atomic.Int64) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	conns = new(atomic.Int64)
	go acceptLoop(ctx, ln, zap.NewNop(), func(c net.Conn) {
		conns.Add(1)
		go func() {
			l := newLink(c)
			defer l.Close()
			if _, err := l.readHello(handshakeTimeout); err == nil {
				l.answerHello(reason, "", "", handshakeTimeout)
			}
		}()
	})
	return ln.Addr().String(), conns
}

// TestJoinRefusalIsFinal: a refusal in the welcome is the primary's
// answer, not a failure that can pass: the joiner stops at once with its
// reason, after one connection, though --connect-timeout has time left.
func TestJoinRefusalIsFinal(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), pairTimeout)
	defer cancel()
	addr, conns := refusingPrimary(t, ctx, "guest arguments differ")
	m := machine(t, "ticker", nil, tlb.Config{PageSize: 64 << 10, Entries: 32, Seed: 1})
	_, err := RunBackup(ctx, BackupOptions{Options: Options{Machine: m, Sink: NewPlainSink(io.Discard)},
		Primary: addr, Join: true, ConnectTimeout: time.Minute})
	var refused *RefusedError
	if !errors.As(err, &refused) || !strings.Contains(err.Error(), "guest arguments differ") {
		t.Fatalf("joiner: %v, want the primary's refusal", err)
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("the joiner connected %d times: a refusal must not be retried", n)
	}
}

// TestJoinGivesUpNamingTheLastFailure: a primary that closes every
// connection before its welcome is tried until --connect-timeout runs
// out, and the error says so and names the last failure.
func TestJoinGivesUpNamingTheLastFailure(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), pairTimeout)
	defer cancel()
	var conns atomic.Int64
	go acceptLoop(ctx, ln, zap.NewNop(), func(c net.Conn) {
		conns.Add(1)
		go func() {
			defer c.Close()
			newLink(c).Recv() // the hello; then the connection is closed
		}()
	})
	m := machine(t, "ticker", nil, tlb.Config{PageSize: 64 << 10, Entries: 32, Seed: 1})
	_, err = RunBackup(ctx, BackupOptions{Options: Options{Machine: m, Sink: NewPlainSink(io.Discard)},
		Primary: ln.Addr().String(), Join: true, ConnectTimeout: time.Second})
	if ctx.Err() != nil {
		t.Fatal("the joiner outlived the test's bound")
	}
	t.Logf("joiner: %v (%d connections)", err, conns.Load())
	if err == nil || !strings.Contains(err.Error(), "the connect timeout ran out") || !strings.Contains(err.Error(), "the last failed: handshake") {
		t.Fatalf("joiner: %v, want the connect timeout and the last failure named", err)
	}
	if conns.Load() < 2 {
		t.Fatalf("the joiner connected %d times in its second: the closed connections must be retried", conns.Load())
	}
}
