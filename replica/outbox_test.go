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

// TestOutboxBatchesBytesUntilTheEpochEnds: console bytes released one at
// a time are written in one batch when the epoch ends (kick), not one
// wake of the writer per byte (which halved a console-bound guest's
// speed); a step with a message (a release watermark) is handed over at
// once, after every output queued before it.
func TestOutboxBatchesBytesUntilTheEpochEnds(t *testing.T) {
	var mu sync.Mutex
	var batches [][]epoch.Output
	var sent [][]epoch.Message
	o := newOutbox(func(outs []epoch.Output, sends []epoch.Message) {
		mu.Lock()
		defer mu.Unlock()
		batches = append(batches, append([]epoch.Output(nil), outs...))
		sent = append(sent, append([]epoch.Message(nil), sends...))
	})
	defer o.close()
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(batches) }
	for seq := uint64(1); seq <= 1000; seq++ {
		o.put(epoch.Actions{Release: []epoch.Output{{Kind: epoch.Console, Seq: seq}}})
	}
	if n := count(); n != 0 {
		t.Fatalf("%d batches written before the epoch ended", n)
	}
	o.kick()
	o.idle()
	if n := count(); n != 1 || len(batches[0]) != 1000 {
		t.Fatalf("after the epoch: %d batches (first of %d outputs), want one of 1000", n, len(batches[0]))
	}
	watermark := epoch.Message{Type: epoch.TypeRelease, Release: &epoch.Release{Output: 1001}}
	o.put(epoch.Actions{Release: []epoch.Output{{Kind: epoch.Console, Seq: 1001}}, Send: []epoch.Message{watermark}})
	o.idle() // handed over with its message, no kick needed
	mu.Lock()
	defer mu.Unlock()
	if len(batches) != 2 || len(batches[1]) != 1 || batches[1][0].Seq != 1001 || len(sent[1]) != 1 {
		t.Fatalf("the watermark's step: batches %d, last %+v, sends %+v", len(batches), batches[len(batches)-1], sent[len(sent)-1])
	}
}

// TestOutboxCountsChunksOut: a Linux program's writes are chunks; every
// byte queued is counted out once written, so the guest never waits for
// room that is already free. (The count was taken after the batch was
// cleared, so a chunk counted out as one byte: a program that wrote more
// than a megabyte hung in room, as a loaded `make test` found in
// TestLinuxDemoSurvivesPrimaryKill.)
func TestOutboxCountsChunksOut(t *testing.T) {
	o := newOutbox(func([]epoch.Output, []epoch.Message) {})
	defer o.close()
	chunk := make([]byte, 4096)
	for seq := uint64(4096); seq <= 100*4096; seq += 4096 { // 400 KiB, below the limit
		o.put(epoch.Actions{Release: []epoch.Output{{Kind: epoch.Console, Seq: seq, Data: chunk}}})
	}
	o.kick()
	o.idle()
	if n := o.bytes.Load(); n != 0 {
		t.Fatalf("%d bytes still counted after everything was written", n)
	}
}
