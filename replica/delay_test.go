package replica

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"hvft/epoch"
	"hvft/vm/tlb"
)

// delayProxy forwards a connection with a one-way delay each way,
// preserving order: a slow network between the replicas. (This kernel has
// no netem qdisc, so the delay is applied here, in user space.)
func delayProxy(t *testing.T, target string, delay time.Duration) string {
	return relay(t, target, func(c, s net.Conn) {
		pipe := func(dst, src net.Conn) {
			type chunk struct {
				at   time.Time
				data []byte
			}
			q := make(chan chunk, 1024)
			go func() {
				for ch := range q {
					time.Sleep(time.Until(ch.at))
					if _, err := dst.Write(ch.data); err != nil {
						return
					}
				}
				dst.Close()
			}()
			buf := make([]byte, 32<<10)
			for {
				n, err := src.Read(buf)
				if n > 0 {
					q <- chunk{time.Now().Add(delay), append([]byte(nil), buf[:n]...)}
				}
				if err != nil {
					close(q)
					return
				}
			}
		}
		go pipe(s, c)
		go pipe(c, s)
	})
}

// TestReplicationOverASlowLink: with 5 ms each way between the replicas,
// a pair still replicates ticker and compute with equal hash trails; the
// cost shows as time, which is logged (never asserted).
func TestReplicationOverASlowLink(t *testing.T) {
	cpu, _ := cpuModel()
	for _, g := range []struct {
		name string
		args []string
	}{{"ticker", []string{"40", "2000"}}, {"compute", []string{"1", "1"}}} {
		var times [2]time.Duration
		for i, delay := range []time.Duration{0, 5 * time.Millisecond} {
			m := machine(t, g.name, g.args, tlb.Config{PageSize: 64 << 10, Entries: 32, Seed: 1})
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			addr := ln.Addr().String()
			if delay > 0 {
				addr = delayProxy(t, addr, delay)
			}
			ctx, cancel := context.WithTimeout(context.Background(), pairTimeout)
			var prep *Report
			var perr error
			done := make(chan struct{})
			start := time.Now()
			go func() {
				defer close(done)
				prep, perr = RunPrimary(ctx, PrimaryOptions{Options: Options{Machine: m, Sink: NewPlainSink(io.Discard), CPU: cpu},
					Listener: ln, BackupWait: time.Minute, Mode: epoch.Bounded, MaxLag: 4})
			}()
			brep, berr := RunBackup(ctx, BackupOptions{Options: Options{Machine: m, Sink: NewPlainSink(io.Discard), CPU: cpu}, Primary: addr})
			<-done
			times[i] = time.Since(start)
			cancel()
			ln.Close()
			if perr != nil || berr != nil || prep.FinalHash != brep.FinalHash || brep.HashesCompared == 0 || brep.BecamePrimary {
				t.Fatalf("%s, %v delay: primary %v, backup %v, hashes %s/%s", g.name, delay, perr, berr, prep.FinalHash, brep.FinalHash)
			}
		}
		t.Logf("%s: %v on loopback, %v with 5 ms each way (%.2fx)", g.name, times[0].Round(time.Millisecond), times[1].Round(time.Millisecond), times[1].Seconds()/times[0].Seconds())
	}
}
