package bench

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"hvft/epoch"
	"hvft/replica"
	"hvft/vm"
)

type pairResult struct {
	seconds   float64
	epochs    uint64
	misses    uint64
	logBytes  uint64
	lagEpochs float64
	lagMS     float64
	backup    *replica.Report
}

// kill describes a fault to inject into a pair: after the primary emitted
// afterOutput console bytes, its link is closed (as by a SIGKILL) or goes
// silent (as by a SIGSTOP: nothing more is sent, nothing is closed).
type kill struct {
	afterOutput uint64
	silent      bool
	at          time.Time // when it was injected
}

// faultConn is the primary's end of the link, which a kill cuts.
type faultConn struct {
	net.Conn
	mu     sync.Mutex
	silent bool
}

func (c *faultConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	silent := c.silent
	c.mu.Unlock()
	if silent {
		return len(p), nil // swallowed: the peer hears nothing
	}
	return c.Conn.Write(p)
}

func (c *faultConn) silence() {
	c.mu.Lock()
	c.silent = true
	c.mu.Unlock()
}

type faultListener struct {
	net.Listener
	mu   sync.Mutex
	conn *faultConn
}

func (l *faultListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	fc := &faultConn{Conn: c}
	l.mu.Lock()
	l.conn = fc
	l.mu.Unlock()
	return fc, nil
}

// killSink counts the primary's outputs and injects the fault.
type killSink struct {
	mu     sync.Mutex
	n      uint64
	k      *kill
	inject func()
	done   bool
}

func (s *killSink) Emit(outs []epoch.Output) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done {
		return nil
	}
	s.n += uint64(len(outs))
	if s.k != nil && s.n >= s.k.afterOutput {
		s.done = true
		s.k.at = time.Now()
		s.inject()
	}
	return nil
}
func (s *killSink) Progress(uint64) error { return nil }
func (s *killSink) Flush() error          { return nil }

// pair runs a primary and a backup in this process over loopback.
func (e *runner) pair(ctx context.Context, m replica.Machine, mode epoch.Mode, k *kill) (pairResult, error) {
	ln0, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return pairResult{}, err
	}
	ln := &faultListener{Listener: ln0}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	pctx, stopPrimary := context.WithCancel(ctx)
	defer stopPrimary()

	var mu sync.Mutex
	var started, finished time.Time
	primaryAt := map[uint64]time.Time{}
	var backupExecuted uint64
	var lagEpochs, lagMS []float64
	onPrimary := func(s vm.Stop) {
		mu.Lock()
		defer mu.Unlock()
		primaryAt[s.Epoch] = time.Now()
		finished = primaryAt[s.Epoch]
		lagEpochs = append(lagEpochs, float64(s.Epoch-min(s.Epoch, backupExecuted)))
	}
	onBackup := func(s vm.Stop) {
		mu.Lock()
		defer mu.Unlock()
		backupExecuted = s.Epoch
		if t, ok := primaryAt[s.Epoch]; ok {
			lagMS = append(lagMS, float64(time.Since(t).Microseconds())/1000)
		}
	}
	var psink replica.Sink = replica.NewPlainSink(io.Discard)
	if k != nil {
		psink = &killSink{k: k, inject: func() {
			ln.mu.Lock()
			c := ln.conn
			ln.mu.Unlock()
			if k.silent {
				c.silence()
				return
			}
			c.Conn.Close()
			stopPrimary()
		}}
	}
	opts := func(sink replica.Sink, on func(vm.Stop)) replica.Options {
		return replica.Options{Machine: m, Sink: sink, CPU: e.cpu, OnEpoch: on}
	}
	popts := opts(psink, onPrimary)
	popts.OnStart = func() { mu.Lock(); started = time.Now(); mu.Unlock() }
	var wg sync.WaitGroup
	var prep, brep *replica.Report
	var perr, berr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		prep, perr = replica.RunPrimary(pctx, replica.PrimaryOptions{Options: popts, Listener: ln, BackupWait: time.Minute, Mode: mode, MaxLag: 4})
	}()
	brep, berr = replica.RunBackup(ctx, replica.BackupOptions{Options: opts(replica.NewPlainSink(io.Discard), onBackup), Primary: ln0.Addr().String()})
	if k != nil {
		stopPrimary() // a silenced primary would wait for acknowledgements forever
	}
	wg.Wait()
	if berr != nil {
		return pairResult{}, fmt.Errorf("backup: %w", berr)
	}
	if k == nil {
		if perr != nil {
			return pairResult{}, fmt.Errorf("primary: %w", perr)
		}
		if prep.FinalHash != brep.FinalHash {
			return pairResult{}, fmt.Errorf("final hashes differ: primary %s, backup %s", prep.FinalHash, brep.FinalHash)
		}
	}
	// The guest's time on the primary: from its start to its power-off,
	// without the handshake or the wait for the backup's final verdict.
	r := pairResult{seconds: finished.Sub(started).Seconds(), backup: brep}
	if prep != nil {
		r.epochs, r.misses, r.logBytes = prep.Epochs, prep.TLBMisses, prep.LogBytes
	}
	r.lagEpochs, r.lagMS = median(lagEpochs), median(lagMS)
	return r, nil
}

func median(xs []float64) float64 { return distOf(xs).Median }

// failovers kills the primary of a replicated ticker at random outputs,
// Kills times with a closed link and Kills times silently, and reports
// the distributions.
func (e *runner) failovers(ctx context.Context) ([]FailoverStats, error) {
	w := workloadNamed("ticker")
	var out []FailoverStats
	for _, silent := range []bool{false, true} {
		kind := "closed link"
		if silent {
			kind = "silent"
		}
		st := FailoverStats{Kind: kind}
		var detect, replay, live []float64
		for i := 0; i < e.opt.Kills; i++ {
			e.opt.Progress("failover (%s): %d of %d", kind, i+1, e.opt.Kills)
			m, err := e.machine(w, defaultEpoch)
			if err != nil {
				return nil, err
			}
			// Kill somewhere in the first two thirds of the console.
			k := &kill{afterOutput: uint64(200 + (i*7919)%1000), silent: silent}
			p, err := e.pair(ctx, m, epoch.Bounded, k)
			if err != nil {
				return nil, err
			}
			f := p.backup.Failover
			if f == nil || k.at.IsZero() {
				continue // the guest finished before the kill
			}
			st.Kills++
			detect = append(detect, float64(f.DetectedUnixNS-k.at.UnixNano())/1e6)
			replay = append(replay, f.ReplayMS)
			if f.LiveUnixNS > 0 {
				live = append(live, float64(f.LiveUnixNS-k.at.UnixNano())/1e6)
			}
		}
		st.Detect, st.Replay, st.KillToLive = distOf(detect), distOf(replay), distOf(live)
		out = append(out, st)
	}
	return out, nil
}
