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
	"testing"

	"go.uber.org/zap"

	"hvft/epoch"
	"hvft/guests"
	"hvft/replica/etcdtest"
	"hvft/vm/tlb"
)

// etcdServer is a real etcd on loopback, for the arbiter's tests.
type etcdServer struct {
	endpoint string
	*etcdtest.Server
}

func startEtcd(t *testing.T) *etcdServer {
	t.Helper()
	addr := etcdtest.FreeAddr(t)
	return &etcdServer{endpoint: addr, Server: etcdtest.Start(t, []string{addr})}
}

func (e *etcdServer) stop() { e.Stop() }

func (e *etcdServer) arbiter(t *testing.T, prefix string) Generations {
	t.Helper()
	g, err := OpenArbiter("etcd://"+e.endpoint+"/"+prefix, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	return g
}

// TestEtcdClaimIsCompareAndSwap: of replicas claiming one generation at
// once, exactly one wins; a generation can only be claimed from the one
// before it.
func TestEtcdClaimIsCompareAndSwap(t *testing.T) {
	e := startEtcd(t)
	testClaimIsCompareAndSwap(t, func() Generations { return e.arbiter(t, "run1") })
}

// TestFileClaimIsCompareAndSwap: the same of the file arbiter.
func TestFileClaimIsCompareAndSwap(t *testing.T) {
	dir := t.TempDir()
	testClaimIsCompareAndSwap(t, func() Generations {
		g, err := OpenArbiter("file:"+dir, nil)
		if err != nil {
			t.Fatal(err)
		}
		return g
	})
}

func testClaimIsCompareAndSwap(t *testing.T, open func() Generations) {
	ctx := context.Background()
	gens := []Generations{open(), open(), open()}
	if gen, _, err := gens[0].Current(ctx); err != nil || gen != 0 {
		t.Fatalf("a fresh run's generation: %d, %v", gen, err)
	}
	for round := uint64(1); round <= 5; round++ {
		var wg sync.WaitGroup
		errs := make([]error, len(gens))
		for i, g := range gens {
			wg.Add(1)
			go func() { defer wg.Done(); errs[i] = g.Claim(ctx, round, fmt.Sprintf("replica-%d", i)) }()
		}
		wg.Wait()
		won := 0
		winner := ""
		for i, err := range errs {
			if err == nil {
				won++
				winner = fmt.Sprintf("replica-%d", i)
			}
		}
		if won != 1 {
			t.Fatalf("round %d: %d replicas won generation %d", round, won, round)
		}
		// A refusal is definite and names the winner, as the register
		// records it.
		for _, err := range errs {
			var lc *epoch.LostClaim
			if err != nil && (!errors.As(err, &lc) || lc.Gen != round || lc.Holder != winner) {
				t.Fatalf("round %d, won by %s: %v", round, winner, err)
			}
		}
	}
	err := gens[0].Claim(ctx, 9, "late")
	if !errors.Is(err, ErrClaimLost) || !strings.Contains(err.Error(), "generation 9 cannot be claimed: the register holds generation 5, held by replica-") {
		t.Fatalf("claiming 9 from 5: %v", err)
	}
	if gen, holder, _ := gens[1].Current(ctx); gen != 5 || !strings.HasPrefix(holder, "replica-") {
		t.Fatalf("current %d held by %q", gen, holder)
	}
}

// cutProxy forwards a connection until the primary has sent n bytes, then
// cuts both directions at once: a partition between the replicas, each
// still reaching the arbiter.
func cutProxy(n int) func(t *testing.T, target string) string { return cutProxyThen(n, nil) }

// cutProxyThen is cutProxy, calling before (if set) just before the cut.
func cutProxyThen(n int, before func()) func(t *testing.T, target string) string {
	return func(t *testing.T, target string) string {
		return relay(t, target, func(c, s net.Conn) {
			go io.Copy(s, c)
			buf := make([]byte, 4096)
			sent := 0
			for sent < n {
				k, err := s.Read(buf[:min(len(buf), n-sent)])
				if k > 0 {
					if _, werr := c.Write(buf[:k]); werr != nil {
						break
					}
					sent += k
				}
				if err != nil {
					break
				}
			}
			if before != nil {
				before()
			}
			c.Close()
			s.Close()
		})
	}
}

// TestPartitionWithEtcdLeavesOnePrimary: the link between the replicas is
// cut in the middle of the run while both reach etcd: both want to act
// alone, exactly one wins the next generation and finishes the run with
// the whole output; the other stops with an error that says why.
func TestPartitionWithEtcdLeavesOnePrimary(t *testing.T) {
	e := startEtcd(t)
	testPartitionLeavesOnePrimary(t, func(run string) Generations { return e.arbiter(t, run) })
}

// TestPartitionWithFileArbiterLeavesOnePrimary: the same on one host,
// with the file arbiter.
func TestPartitionWithFileArbiterLeavesOnePrimary(t *testing.T) {
	root := t.TempDir()
	testPartitionLeavesOnePrimary(t, func(run string) Generations {
		g, err := OpenArbiter("file:"+filepath.Join(root, run), nil)
		if err != nil {
			t.Fatal(err)
		}
		return g
	})
}

func testPartitionLeavesOnePrimary(t *testing.T, open func(run string) Generations) {
	tl := tlb.Config{PageSize: 64 << 10, Entries: 32, Seed: 1}
	for i, cut := range []int{4 << 10, 12 << 10, 24 << 10} {
		prefix := fmt.Sprintf("partition-%d", i)
		p, b := runPair(t, pairConfig{guest: "ticker", args: []string{"200", "1000"}, primaryTLB: tl, backupTLB: tl,
			proxy: cutProxy(cut), arbiter: func() Generations { return open(prefix) }})
		pw, bw := p.err == nil, b.err == nil && b.rep != nil && b.rep.BecamePrimary
		if pw == bw {
			t.Fatalf("cut after %d bytes: primary %v, backup %v (%+v): want exactly one to go on", cut, p.err, b.err, b.rep)
		}
		loser := b.err
		if bw {
			loser = p.err
		}
		if loser == nil || !strings.Contains(loser.Error(), "generation") {
			t.Fatalf("cut after %d bytes: the loser says %v, want the generation it lost", cut, loser)
		}
		out := p.out.String()
		if bw {
			var ok bool
			if out, ok = mergeConsoles(p.out.String(), b.out.String()); !ok {
				t.Fatalf("cut after %d bytes: the backup's console does not go on from the primary's:\n%q\n%q", cut, p.out.String(), b.out.String())
			}
		}
		if err := guests.CheckTicker(out, 200); err != nil {
			t.Fatalf("cut after %d bytes (primary won: %v): %v\n%s", cut, pw, err, out)
		}
		gen, _, _ := open(prefix).Current(context.Background())
		if gen != 2 {
			t.Fatalf("generation %d after one partition, want 2", gen)
		}
		t.Logf("cut after %d bytes: the %s won generation 2", cut, map[bool]string{true: "primary", false: "backup"}[pw])
	}
}

// TestArbiterUnreachableMeansNobodyGoesOnAlone: with etcd gone, a pair
// that loses its link has no replica that may act alone: both stop, each
// saying its claim's outcome is unknown.
func TestArbiterUnreachableMeansNobodyGoesOnAlone(t *testing.T) {
	e := startEtcd(t)
	tl := tlb.Config{PageSize: 64 << 10, Entries: 32, Seed: 1}
	p, b := runPair(t, pairConfig{guest: "ticker", args: []string{"200", "1000"}, primaryTLB: tl, backupTLB: tl,
		proxy: cutProxyThen(4<<10, e.stop), arbiter: func() Generations { return e.arbiter(t, "gone") }})
	if p.err == nil || b.err == nil {
		t.Fatalf("primary %v, backup %v: with the arbiter gone neither may go on alone", p.err, b.err)
	}
	if b.rep != nil && b.rep.BecamePrimary {
		t.Fatal("the backup took over without the arbiter")
	}
	// Neither can know whether its claim landed, and neither says more.
	for role, err := range map[string]error{"primary": p.err, "backup": b.err} {
		wantNamed(t, role, err, "the claim's outcome is unknown")
	}
}

// mergeConsoles joins the primary's console and the backup's, which goes
// on from some byte of the primary's (it re-emits from its last release
// watermark, possibly before the end of what the primary's sink took, and
// possibly inside a line): the shortest primary prefix after which the
// backup's console continues. ok is false when there is none.
func mergeConsoles(primary, backup string) (string, bool) {
	for k := 0; k <= len(primary); k++ {
		if strings.HasPrefix(backup, primary[k:]) {
			return primary[:k] + backup, true
		}
	}
	return "", false
}
