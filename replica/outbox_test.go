package replica

import (
	"bytes"
	"context"
	"sync"
	"sync/atomic"
	"testing"

	"hvft/epoch"
	"hvft/guests"
	"hvft/vm"
	"hvft/vm/tlb"
)

// stallingSink holds its first Emit until let is closed: a pipe nobody
// reads for a while.
type stallingSink struct {
	Sink
	once    sync.Once
	stalled chan struct{} // closed when the first Emit blocks
	let     chan struct{}
}

func (s *stallingSink) Emit(outs []epoch.Output) error {
	first := false
	s.once.Do(func() { first = true })
	if first {
		close(s.stalled)
		<-s.let
	}
	return s.Sink.Emit(outs)
}

// TestStalledSinkDoesNotStallTheGuest: a primary's console sink blocks in
// its first write, and the guest goes on executing epochs all the same
// (its outputs wait in the outbox, bounded). When the sink drains, the
// console is whole and in order. Before the outbox, the write ran under
// the protocol's lock on the machine thread, and no epoch ran until the
// sink returned: the wait for further epochs below reached its bound.
func TestStalledSinkDoesNotStallTheGuest(t *testing.T) {
	cpu, err := cpuModel()
	if err != nil {
		t.Fatal(err)
	}
	const lines = 40
	var out bytes.Buffer
	sink := &stallingSink{Sink: NewPlainSink(&out), stalled: make(chan struct{}), let: make(chan struct{})}
	var epochs atomic.Uint64
	moved := make(chan struct{})
	var stalledAt atomic.Uint64
	m := machine(t, "ticker", []string{"40", "2000"}, tlb.Config{PageSize: 64 << 10, Entries: 32, Seed: 1})
	ctx, cancel := context.WithTimeout(context.Background(), pairTimeout)
	defer cancel()
	onEpoch := func(s vm.Stop) {
		n := epochs.Add(1)
		select {
		case <-sink.stalled:
			if at := stalledAt.Load(); at == 0 {
				stalledAt.Store(n)
			} else if n == at+20 {
				close(moved)
			}
		default:
		}
	}
	done := make(chan error, 1)
	go func() {
		_, err := RunPrimary(ctx, PrimaryOptions{Options: Options{Machine: m, Sink: sink, CPU: cpu, OnEpoch: onEpoch}})
		done <- err
	}()
	select {
	case <-moved: // 20 epochs ran while the sink was stalled
	case err := <-done:
		t.Fatalf("the run ended while the sink was stalled: %v", err)
	case <-ctx.Done():
		t.Fatal("no 20 epochs ran while the console sink was stalled: the sink stalls the guest")
	}
	close(sink.let)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := guests.CheckTicker(out.String(), lines); err != nil {
		t.Fatalf("console after the stall: %v", err)
	}
}
