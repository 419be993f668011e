package replica

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"

	"hvft/epoch"
	"hvft/guests"
	"hvft/vm/tlb"
)

// answerLost is an arbiter whose claim of generation gen gets no answer:
// the compare-and-swap lands at the register underneath (land) or not,
// and the claimant hears claimErr (a timeout by default) either way.
// With unreadable, the register cannot be read once that claim was made.
// The claim of gen first waits for wait (if set) to close, and closes
// done when it returns, so that tests order two replicas' claims with
// channels, not sleeps.
type answerLost struct {
	Generations
	gen        uint64
	land       bool
	unreadable bool
	claimErr   error
	bound      context.Context // bounds the wait, whatever the claimant's context
	wait       <-chan struct{}
	done       chan struct{}
	claimed    atomic.Bool
}

func (a *answerLost) Claim(ctx context.Context, gen uint64, holder string) error {
	if gen != a.gen {
		return a.Generations.Claim(ctx, gen, holder)
	}
	defer close(a.done)
	if a.wait != nil {
		select {
		case <-a.wait:
		case <-ctx.Done():
			return ctx.Err()
		case <-a.bound.Done():
			return fmt.Errorf("the other claim never came: %w", a.bound.Err())
		}
	}
	a.claimed.Store(true)
	if a.land {
		if err := a.Generations.Claim(ctx, gen, holder); err != nil {
			return err
		}
	}
	if a.claimErr != nil {
		return fmt.Errorf("claiming generation %d at %s: %w", gen, a, a.claimErr)
	}
	return fmt.Errorf("claiming generation %d at %s: %w", gen, a, context.DeadlineExceeded)
}

func (a *answerLost) Current(ctx context.Context) (uint64, string, error) {
	if a.unreadable && a.claimed.Load() {
		return 0, "", fmt.Errorf("reading the arbiter %s: connection refused", a)
	}
	return a.Generations.Current(ctx)
}

// ordered passes every call to the register, answers included, and only
// orders its claim of gen as answerLost does (wait, then done).
type ordered struct {
	Generations
	gen   uint64
	bound context.Context
	wait  <-chan struct{}
	done  chan struct{}
}

func answered(bound context.Context, g Generations, gen uint64, wait <-chan struct{}, done chan struct{}) *ordered {
	return &ordered{Generations: g, gen: gen, bound: bound, wait: wait, done: done}
}

func (o *ordered) Claim(ctx context.Context, gen uint64, holder string) error {
	if gen != o.gen {
		return o.Generations.Claim(ctx, gen, holder)
	}
	defer close(o.done)
	if o.wait != nil {
		select {
		case <-o.wait:
		case <-ctx.Done():
			return ctx.Err()
		case <-o.bound.Done():
			return fmt.Errorf("the other claim never came: %w", o.bound.Err())
		}
	}
	return o.Generations.Claim(ctx, gen, holder)
}

// TestClaimSettlesALostAnswer: the read-back that settles a claim whose
// answer was lost, on the file arbiter under a fake that loses answers.
func TestClaimSettlesALostAnswer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), pairTimeout)
	defer cancel()
	open := func() Generations {
		g, err := OpenFileGenerations(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		if err := g.Claim(ctx, 1, "old"); err != nil {
			t.Fatal(err)
		}
		return g
	}
	lost := func(g Generations, land, unreadable bool, claimErr error) *answerLost {
		return &answerLost{Generations: g, gen: 2, land: land, unreadable: unreadable, claimErr: claimErr, bound: ctx, done: make(chan struct{})}
	}

	// It landed, its answer timed out or the connection broke: won.
	for _, e := range []error{context.DeadlineExceeded, io.ErrUnexpectedEOF} {
		if err := claim(ctx, lost(open(), true, false, e), 2, "me", 0, zap.NewNop()); err != nil {
			t.Errorf("a claim that landed, answered by %v: %v, want it won", e, err)
		}
	}

	// It did not land, and another replica holds 2: lost, naming it.
	g := open()
	if err := g.Claim(ctx, 2, "other"); err != nil {
		t.Fatal(err)
	}
	err := claim(ctx, lost(g, false, false, nil), 2, "me", 0, zap.NewNop())
	var lc *epoch.LostClaim
	if !errors.As(err, &lc) || lc.Holder != "other" || !strings.Contains(err.Error(), "generation 2 is held by other") {
		t.Errorf("a claim that did not land, against other's: %v, want lost to other", err)
	}

	// It did not land, and nobody moved the register: lost, saying so.
	err = claim(ctx, lost(open(), false, false, nil), 2, "me", 0, zap.NewNop())
	if !errors.Is(err, ErrClaimLost) || !strings.Contains(err.Error(), "did not land: the register still holds generation 1, held by old") {
		t.Errorf("a claim that did not land: %v", err)
	}

	// The register cannot be read back: the outcome is unknown, within
	// the bound.
	err = claim(ctx, lost(open(), true, true, nil), 2, "me", 200*time.Millisecond, zap.NewNop())
	if !errors.Is(err, epoch.ErrClaimUnknown) || errors.Is(err, ErrClaimLost) || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("a claim that cannot be read back: %v, want its outcome unknown", err)
	}
	if ctx.Err() != nil {
		t.Fatal("the read-back outlived the test's bound")
	}
}

// TestLostClaimAnswerIsSettled: the link between the replicas is cut and
// both claim generation 2; the answer to one claim is lost (the fake
// arbiter answers a timeout). The claimant reads the register back:
//
//   - landed: the primary's claim went through, so it goes on alone and
//     finishes the run; the backup, claiming after it, is refused and says
//     who holds the generation. (Before, the primary took the timeout for
//     a loss and fenced itself, the backup was told "another replica went
//     on as the primary", and nobody ran.)
//   - not landed: the backup claimed first and won; the primary's claim
//     did not land, and it stops naming the backup as the holder.
//   - unreadable: the primary's claim landed but the register cannot be
//     read back: it stops, saying the outcome is unknown, and does not go
//     on alone; the backup is refused (the register holds the primary's
//     claim) and names the primary. Nobody runs, and nobody says more
//     than the register does.
func TestLostClaimAnswerIsSettled(t *testing.T) {
	tl := tlb.Config{PageSize: 64 << 10, Entries: 32, Seed: 1}
	for _, c := range []struct {
		name       string
		land       bool
		unreadable bool
	}{
		{"landed", true, false},
		{"not landed", false, false},
		{"unreadable", true, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), pairTimeout)
			defer cancel()
			dir := filepath.Join(t.TempDir(), "gens")
			primaryDone, backupDone := make(chan struct{}), make(chan struct{})
			wrap := func(role string, g Generations) Generations {
				if role == "primary" {
					l := &answerLost{Generations: g, gen: 2, land: c.land, unreadable: c.unreadable, bound: ctx, done: primaryDone}
					if !c.land {
						l.wait = backupDone // the backup claims first and wins
					}
					return l
				}
				if c.land {
					return answered(ctx, g, 2, primaryDone, backupDone) // after the primary's claim
				}
				return answered(ctx, g, 2, nil, backupDone)
			}
			p, b := runPair(t, pairConfig{guest: "ticker", args: []string{"200", "1000"}, primaryTLB: tl, backupTLB: tl,
				proxy: cutProxy(4 << 10), claimReadBack: 300 * time.Millisecond, wrapArbiter: wrap,
				arbiter: func() Generations {
					g, err := OpenArbiter("file:"+dir, nil)
					if err != nil {
						t.Fatal(err)
					}
					return g
				}})
			gen, h, err := mustOpen(t, dir).Current(ctx)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("primary: %v\nbackup: %v\nregister: generation %d held by %s", p.err, b.err, gen, h)
			tookOver := b.rep != nil && b.rep.BecamePrimary
			switch c.name {
			case "landed":
				if p.err != nil || tookOver {
					t.Fatalf("primary %v, backup took over %v: the primary won generation 2 and must go on", p.err, tookOver)
				}
				if err := guests.CheckTicker(p.out.String(), 200); err != nil {
					t.Fatalf("the primary's console: %v", err)
				}
				wantNamed(t, "backup", b.err, "generation 2 is held by "+holder("primary", p))
			case "not landed":
				if b.err != nil || !tookOver {
					t.Fatalf("backup %v, took over %v: it won generation 2 and must take over", b.err, tookOver)
				}
				wantNamed(t, "primary", p.err, "generation 2 is held by "+holder("backup", b))
			case "unreadable":
				if p.err == nil || tookOver {
					t.Fatalf("primary %v, backup took over %v: with the outcome unknown nobody goes on", p.err, tookOver)
				}
				wantNamed(t, "primary", p.err, "the claim's outcome is unknown")
				wantNamed(t, "backup", b.err, "generation 2 is held by "+holder("primary", p))
			}
			if gen != 2 {
				t.Fatalf("the register holds generation %d, want 2", gen)
			}
		})
	}
}

func mustOpen(t *testing.T, dir string) Generations {
	t.Helper()
	g, err := OpenFileGenerations(dir)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func wantNamed(t *testing.T, role string, err error, want string) {
	t.Helper()
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("%s: %v, want an error saying %q", role, err, want)
	}
	if strings.Contains(err.Error(), "went on as the primary") {
		t.Fatalf("%s: %v: a claim cannot tell that the other replica went on", role, err)
	}
}

// replyDropper stands between an etcd client and etcd: it forwards every
// request, and while dropping is set it swallows etcd's replies, as a
// one-way partition drops them.
type replyDropper struct {
	ln       net.Listener
	dropping atomic.Bool
	mu       sync.Mutex
	conns    []net.Conn
}

func startReplyDropper(t *testing.T, target string) *replyDropper {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d := &replyDropper{ln: ln}
	t.Cleanup(d.close)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			d.mu.Lock()
			d.conns = append(d.conns, c, s)
			d.mu.Unlock()
			go func() { io.Copy(s, c); s.Close() }()
			go func() {
				defer c.Close()
				buf := make([]byte, 32<<10)
				for {
					k, err := s.Read(buf)
					if k > 0 && !d.dropping.Load() {
						if _, werr := c.Write(buf[:k]); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return d
}

func (d *replyDropper) close() {
	d.ln.Close()
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, c := range d.conns {
		c.Close()
	}
}

// droppedReplies is the primary's etcd arbiter behind a replyDropper:
// etcd's replies to its claim of gen are dropped (the transaction lands,
// the client times out), then the drop ends.
type droppedReplies struct {
	Generations
	d    *replyDropper
	gen  uint64
	done chan struct{}
}

func (r *droppedReplies) Claim(ctx context.Context, gen uint64, holder string) error {
	if gen != r.gen {
		return r.Generations.Claim(ctx, gen, holder)
	}
	defer close(r.done)
	r.d.dropping.Store(true)
	defer r.d.dropping.Store(false)
	return r.Generations.Claim(ctx, gen, holder)
}

// TestLostEtcdAnswerIsSettled: the bug as it was met, on a real etcd.
// The link between the replicas is cut while etcd's replies to the
// primary are dropped: the primary's transaction lands, its client times
// out ("context deadline exceeded"). The primary reads the register back
// once the replies flow again, finds itself the holder of generation 2
// and goes on alone to the end of the run; the backup, claiming after
// it, is refused and names the primary. Before, the primary fenced itself
// and the backup was told "another replica went on as the primary":
// nobody ran.
func TestLostEtcdAnswerIsSettled(t *testing.T) {
	e := startEtcd(t)
	d := startReplyDropper(t, e.endpoint)
	ctx, cancel := context.WithTimeout(context.Background(), pairTimeout)
	defer cancel()
	primaryDone, backupDone := make(chan struct{}), make(chan struct{})
	tl := tlb.Config{PageSize: 64 << 10, Entries: 32, Seed: 1}
	p, b := runPair(t, pairConfig{guest: "ticker", args: []string{"200", "1000"}, primaryTLB: tl, backupTLB: tl,
		proxy:   cutProxy(4 << 10),
		arbiter: func() Generations { return e.arbiter(t, "lost-answer") },
		wrapArbiter: func(role string, g Generations) Generations {
			if role == "backup" {
				return answered(ctx, g, 2, primaryDone, backupDone)
			}
			g.Close()
			pg, err := OpenArbiter("etcd://"+d.ln.Addr().String()+"/lost-answer", zap.NewNop())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { pg.Close() })
			return &droppedReplies{Generations: pg, d: d, gen: 2, done: primaryDone}
		}})
	t.Logf("primary: %v\nbackup: %v", p.err, b.err)
	if p.err != nil || (b.rep != nil && b.rep.BecamePrimary) {
		t.Fatalf("primary %v: its claim of generation 2 landed, so it must go on alone", p.err)
	}
	if err := guests.CheckTicker(p.out.String(), 200); err != nil {
		t.Fatalf("the primary's console: %v", err)
	}
	wantNamed(t, "backup", b.err, "generation 2 is held by "+holder("primary", p))
	if gen, h, err := e.arbiter(t, "lost-answer").Current(ctx); err != nil || gen != 2 || h != holder("primary", p) {
		t.Fatalf("the register holds generation %d by %q (%v), want 2 by the primary", gen, h, err)
	}
}
