package vm

import (
	"context"
	"testing"
	"time"

	"hvft/guests"
	"hvft/vm/guestelf"
	"hvft/vm/tlb"
)

// testTimeout bounds every run in these tests.
const testTimeout = 2 * time.Minute

func image(t testing.TB, name string) *guestelf.Image {
	t.Helper()
	data, ok := guests.Builtin(name)
	if !ok {
		t.Fatalf("no built-in guest %q", name)
	}
	img, err := guestelf.Parse(data, DefaultRAMSize, ImageMinAddr)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func tlbConfig(page uint64, entries int, policy tlb.Policy, seed uint64) tlb.Config {
	return tlb.Config{PageSize: page, Entries: entries, Policy: policy, Seed: seed}
}

// sharedCPU is probed once per test binary; probing costs an engine.
var sharedCPU = func() func(t testing.TB) *CPUModel {
	var cpu *CPUModel
	return func(t testing.TB) *CPUModel {
		t.Helper()
		if cpu == nil {
			c, err := ProbeCPUModel()
			if err != nil {
				t.Fatal(err)
			}
			cpu = c
		}
		return cpu
	}
}()

type runResult struct {
	res   Result
	ends  []Stop
	stats Stats
	final Digest
	out   []byte
	err   error
}

type consoleBuffer struct{ b []byte }

func (c *consoleBuffer) Write(p []byte) (int, error) { c.b = append(c.b, p...); return len(p), nil }

// runGuest runs a guest to power-off on env (a live environment recording
// into rec when env is nil).
func runGuest(t testing.TB, name string, args []string, cfg Config, env Environment, rec Recorder, epochLen uint64) runResult {
	t.Helper()
	var out consoleBuffer
	var live *Live
	if env == nil {
		var err error
		live, err = NewLive(LiveConfig{Console: &out, Recorder: rec, CPU: sharedCPU(t)})
		if err != nil {
			t.Fatal(err)
		}
		env = live
	}
	cfg.Args = append([]string{name}, args...)
	if cfg.RAMSize == 0 {
		cfg.RAMSize = DefaultRAMSize
	}
	m, err := New(cfg, image(t, name), env, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	var r runResult
	r.res, r.err = m.Run(ctx, RunOptions{EpochLength: epochLen, MaxEpochs: 1 << 20, OnEpoch: func(s Stop) error {
		r.ends = append(r.ends, s)
		return nil
	}})
	if live != nil {
		live.Close()
	}
	r.stats = m.Stats()
	if r.final, err = m.Hash(); err != nil {
		t.Fatal(err)
	}
	r.out = out.b
	return r
}
