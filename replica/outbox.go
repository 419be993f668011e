package replica

import (
	"sync"

	"hvft/epoch"
)

// outboxLimit bounds the console bytes released but not yet written: past
// it the guest waits for the sink (the only stall a slow sink may cause).
const outboxLimit = 1 << 20

// outbox carries out a primary's released outputs away from the protocol's
// lock and the machine thread, in the order the protocol released them:
// a sink that blocks (a full pipe, a slow disk) delays the outputs, not
// the emulated CPU nor the acknowledgements. One goroutine performs
// everything queued (raft's Ready, applied by one loop).
type outbox struct {
	mu      sync.Mutex
	cond    *sync.Cond
	queue   []outItem
	bytes   int  // console bytes queued
	busy    bool // the goroutine is performing a batch
	closed  bool
	perform func(outItem)
	done    chan struct{}
}

// outItem is one step's released outputs with the messages that announce
// them, or only a flush of the sink (when the outbox has caught up).
type outItem struct {
	act   epoch.Actions
	flush bool
}

func newOutbox(perform func(outItem)) *outbox {
	o := &outbox{perform: perform, done: make(chan struct{})}
	o.cond = sync.NewCond(&o.mu)
	go o.run()
	return o
}

func (o *outbox) run() {
	defer close(o.done)
	o.mu.Lock()
	defer o.mu.Unlock()
	for {
		for len(o.queue) == 0 && !o.closed {
			o.cond.Wait()
		}
		if len(o.queue) == 0 {
			return
		}
		batch := o.queue
		o.queue, o.busy = nil, true
		o.mu.Unlock()
		for _, it := range batch {
			o.perform(it)
		}
		o.mu.Lock()
		if len(o.queue) == 0 {
			// Caught up: what the sink buffers leaves now, so output
			// never waits for the next release to appear.
			o.mu.Unlock()
			o.perform(outItem{flush: true})
			o.mu.Lock()
		}
		for _, it := range batch {
			o.bytes -= queuedBytes(it.act.Release)
		}
		o.busy = false
		o.cond.Broadcast()
	}
}

// put queues one step's work; it never blocks (it runs under the
// protocol's lock).
func (o *outbox) put(it outItem) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return
	}
	o.queue = append(o.queue, it)
	o.bytes += queuedBytes(it.act.Release)
	o.cond.Broadcast()
}

// room waits while more than outboxLimit bytes wait for the sink.
func (o *outbox) room() {
	o.mu.Lock()
	defer o.mu.Unlock()
	for o.bytes > outboxLimit && !o.closed {
		o.cond.Wait()
	}
}

// idle waits until everything queued so far has been performed.
func (o *outbox) idle() {
	o.mu.Lock()
	defer o.mu.Unlock()
	for (len(o.queue) > 0 || o.busy) && !o.closed {
		o.cond.Wait()
	}
}

// close performs what is queued, then stops the goroutine.
func (o *outbox) close() {
	o.mu.Lock()
	o.closed = true
	o.cond.Broadcast()
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
