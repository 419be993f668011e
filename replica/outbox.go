package replica

import (
	"sync"
	"sync/atomic"

	"hvft/epoch"
)

const (
	// outboxLimit bounds the console bytes released but not yet written:
	// past it the guest waits for the sink (the only stall a slow sink
	// may cause).
	outboxLimit = 1 << 20
	// outboxBatch is how many queued console bytes wake the writer
	// before the epoch ends.
	outboxBatch = 64 << 10
)

// outbox carries out a primary's released outputs away from the protocol's
// lock and the machine thread, in the order the protocol released them:
// a sink that blocks (a full pipe, a slow disk) delays the outputs, not
// the emulated CPU nor the acknowledgements. One goroutine performs what
// is queued, a batch at a time (raft's Ready, applied by one loop).
//
// Console bytes released one at a time (a board guest's OUT) are not
// handed over one at a time: the writer is woken when a step carries
// messages (a release watermark) or a disk write, when 64 KiB are queued,
// and at the end of every epoch (kick), which is when a primary alone
// flushed its console before. A wake per byte cost a console-bound guest
// half its speed.
type outbox struct {
	mu    sync.Mutex
	cond  *sync.Cond // the writer waits on it for work
	space *sync.Cond // producers wait on it for room, or for idle
	// The queue, flat so that a byte's output costs a copy, not an
	// allocation: released outputs in order, and the messages that
	// announce them, which go out after every output queued before them
	// is written. spare is the batch the writer last performed, reused.
	outs       []epoch.Output
	sends      []epoch.Message
	spareOuts  []epoch.Output
	spareSends []epoch.Message
	bytes      atomic.Int64 // console bytes queued or being written (room reads it without mu)
	wake       bool         // the writer has been asked to run
	busy       bool         // the writer is performing a batch
	closed     bool
	perform    func(outs []epoch.Output, sends []epoch.Message)
	done       chan struct{}
}

func newOutbox(perform func(outs []epoch.Output, sends []epoch.Message)) *outbox {
	o := &outbox{perform: perform, done: make(chan struct{})}
	o.cond, o.space = sync.NewCond(&o.mu), sync.NewCond(&o.mu)
	go o.run()
	return o
}

func (o *outbox) pending() bool { return len(o.outs) > 0 || len(o.sends) > 0 }

func (o *outbox) run() {
	defer close(o.done)
	o.mu.Lock()
	defer o.mu.Unlock()
	for {
		for !(o.wake && o.pending()) && !o.closed {
			o.cond.Wait()
		}
		if !o.pending() {
			return // closed, and everything performed
		}
		outs, sends := o.outs, o.sends
		o.outs, o.sends = o.spareOuts[:0], o.spareSends[:0]
		o.wake, o.busy = false, true
		o.mu.Unlock()
		o.perform(outs, sends)
		written := int64(queuedBytes(outs))
		clear(outs) // drop references to the written data
		clear(sends)
		o.mu.Lock()
		o.bytes.Add(-written)
		o.spareOuts, o.spareSends = outs[:0], sends[:0]
		o.busy = false
		o.space.Broadcast()
	}
}

// put queues one step's released outputs and messages; it never blocks
// (it runs under the protocol's lock).
func (o *outbox) put(act epoch.Actions) {
	n := int64(queuedBytes(act.Release))
	o.mu.Lock()
	if !o.closed {
		o.outs = append(o.outs, act.Release...)
		o.sends = append(o.sends, act.Send...)
		if o.bytes.Add(n) >= outboxBatch || len(act.Send) > 0 || hasDiskWrite(act.Release) {
			o.wakeLocked()
		}
	}
	o.mu.Unlock() // not deferred: this runs for every console byte
}

// kick hands what is queued to the writer (the end of an epoch).
func (o *outbox) kick() {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.pending() {
		o.wakeLocked()
	}
}

func (o *outbox) wakeLocked() {
	o.wake = true
	o.cond.Signal()
}

// room waits while more than outboxLimit bytes wait for the sink.
func (o *outbox) room() {
	if o.bytes.Load() <= outboxLimit {
		return // the common case, for every console byte: no lock
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	for o.bytes.Load() > outboxLimit && !o.closed {
		o.wakeLocked()
		o.space.Wait()
	}
}

// idle waits until everything queued so far has been performed.
func (o *outbox) idle() {
	o.mu.Lock()
	defer o.mu.Unlock()
	for (o.pending() || o.busy) && !o.closed {
		if o.pending() {
			o.wakeLocked()
		}
		o.space.Wait()
	}
}

// close performs what is queued, then stops the goroutine.
func (o *outbox) close() {
	o.mu.Lock()
	o.closed = true
	o.wake = true
	o.cond.Signal()
	o.space.Broadcast()
	o.mu.Unlock()
	<-o.done
}

func queuedBytes(outs []epoch.Output) int {
	n := 0
	for _, o := range outs {
		if o.Kind != epoch.Console {
			continue
		}
		if o.Data != nil {
			n += len(o.Data)
		} else {
			n++
		}
	}
	return n
}

func hasDiskWrite(outs []epoch.Output) bool {
	for _, o := range outs {
		if o.Kind == epoch.DiskWrite {
			return true
		}
	}
	return false
}
