package replica

import (
	"context"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	"github.com/zeebo/xxh3"
	"go.uber.org/zap"

	"hvft/epoch"
	"hvft/vm"
)

// State transfer to a joining backup (docs/protocol.md, "Joining"): a
// pre-copy of all RAM while the guest keeps running, then, at an epoch
// boundary, a short stop-and-copy of the pages that changed and of the
// machine's state; then the log streams from that boundary. Changed pages
// are found by hashing each 4 KiB page of what the pre-copy sent and
// comparing at the stop: no write tracking in the guest's path at all.

const (
	joinPage  = 4096
	joinChunk = 256 << 10
	// joinWindow bounds the pre-copy's bytes queued on the link.
	joinWindow = 4 << 20
)

type transfer struct {
	link     *Link
	hashes   []uint64 // of each page as the pre-copy sent it
	done     chan error
	finished chan struct{} // the pre-copy stopped reading RAM
	abort    atomic.Bool
	started  time.Time
	report   Join
}

// abortTransfer stops a pre-copy in progress and waits until it no longer
// reads guest RAM: the machine's memory goes away when the run ends.
func (p *primary) abortTransfer() {
	t := p.transfer
	if t == nil {
		return
	}
	t.abort.Store(true)
	t.link.Close()
	<-t.finished
	p.transfer = nil
}

// acceptAll serves the primary's listener for the whole run, one
// handshake per connection, so that idle or slow peers never make a real
// backup wait behind them: while the primary waits for its first backup
// (awaiting) the first matching backup started without --join becomes
// it; once the guest runs, a backup started with --join may join while
// the primary has none.
func (p *primary) acceptAll(ctx context.Context) {
	want := p.opt.Machine.wireConfig()
	acceptLoop(ctx, p.opt.Listener, p.log, func(conn net.Conn) { go p.admit(ctx, conn, want) })
}

func (p *primary) admit(ctx context.Context, conn net.Conn, want epoch.MachineConfig) {
	peer := conn.RemoteAddr().String()
	conn, err := p.opt.Auth.secure(ctx, conn, true)
	if err != nil {
		p.log.Warn("refused a peer that did not authenticate", zap.String("peer", peer), zap.Error(err))
		return
	}
	l := newLink(conn)
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	hello, err := l.readHello(p.handshake)
	if err != nil {
		p.log.Warn("turned away a peer that failed the handshake", zap.String("peer", peer), zap.Error(err))
		l.Close()
		return
	}
	reason := compareConfigs(want, hello.Config, p.opt.Advertise != "")
	p.mu.Lock()
	first := p.awaiting
	p.mu.Unlock()
	if first && reason == "" && !hello.Join {
		// One candidate at a time completes the first backup's
		// handshake; the next waits for its outcome (one that gave up
		// frees the slot at once) instead of being refused.
		select {
		case p.firstSlot <- struct{}{}:
			defer func() { <-p.firstSlot }()
		case <-ctx.Done():
			l.Close()
			return
		}
	}
	p.mu.Lock()
	adm := epoch.Admission{AwaitingFirst: p.awaiting, FirstTaken: p.firstTaken,
		Busy: !p.proto.Alone() || p.transfer != nil || len(p.joins) > 0 || p.proto.Ended()}
	p.mu.Unlock()
	reason, first = adm.Admit(reason, hello.Join)
	proof := ""
	if reason == "" {
		var err error
		if proof, err = p.opt.Machine.writeProof(); err != nil {
			reason = fmt.Sprintf("the primary cannot prove which disk it shares: %v", err)
		}
	}
	if err := l.answerHello(reason, p.opt.Advertise, proof, p.handshake); err != nil {
		p.log.Warn("turned away a peer that failed the handshake", zap.String("peer", peer), zap.Error(err))
		l.Close()
		return
	}
	if first {
		p.mu.Lock()
		p.firstTaken = true
		p.mu.Unlock()
	}
	if reason != "" {
		p.log.Warn("refused a backup", zap.String("peer", peer), zap.String("reason", reason))
		l.CloseAfter(time.Second)
		return
	}
	if !stop() {
		return // the run is over
	}
	if first {
		p.first <- l // buffered: there is only ever one first backup
		return
	}
	select {
	case p.joins <- l:
		p.log.Info("a backup is joining", zap.String("backup", conn.RemoteAddr().String()))
	default:
		l.Close()
	}
}

// pollJoin runs on the machine thread at every epoch boundary: it starts
// the pre-copy of a new joiner, and once the pre-copy is done, performs the
// stop-and-copy and pairs the primary with the joiner from this boundary.
func (p *primary) pollJoin(ctx context.Context, e uint64, at *vm.Boundary) {
	if p.transfer == nil {
		select {
		case l := <-p.joins:
			t := &transfer{link: l, done: make(chan error, 1), finished: make(chan struct{}), started: time.Now()}
			ram := at.RAM()
			t.hashes = make([]uint64, len(ram)/joinPage)
			p.transfer = t
			go t.precopy(ram)
		default:
		}
		return
	}
	t := p.transfer
	select {
	case err := <-t.done:
		p.transfer = nil
		if err != nil {
			p.log.Warn("state transfer failed; still alone", zap.Error(err))
			t.link.Close()
			return
		}
		if err := p.stopAndCopy(ctx, e, at, t); err != nil {
			p.log.Warn("state transfer failed; still alone", zap.Error(err))
			t.link.Close()
		}
	default:
	}
}

// precopy sends all of RAM while the guest runs, remembering the hash of
// each page as sent.
func (t *transfer) precopy(ram []byte) {
	defer close(t.finished)
	var queued uint64
	for off := 0; off < len(ram); off += joinChunk {
		if t.abort.Load() {
			t.done <- fmt.Errorf("the run ended during the pre-copy")
			return
		}
		end := min(off+joinChunk, len(ram))
		chunk := append([]byte(nil), ram[off:end]...) // a consistent copy of pages in flux
		for pg := 0; pg < len(chunk); pg += joinPage {
			t.hashes[(off+pg)/joinPage] = xxh3.Hash(chunk[pg : pg+joinPage])
		}
		if err := t.link.Send(epoch.Message{Type: epoch.TypeJoinRAM, JoinRAM: &epoch.JoinRAM{Offset: uint64(off), Data: chunk}}); err != nil {
			t.done <- err
			return
		}
		t.report.Bytes += uint64(len(chunk))
		if queued += uint64(len(chunk)); queued >= joinWindow {
			if err := t.link.Drain(time.Minute); err != nil {
				t.done <- err
				return
			}
			queued = 0
		}
	}
	t.done <- t.link.Drain(time.Minute)
}

// stopAndCopy sends the pages that changed since the pre-copy, the
// machine's state and its hash, then pairs the primary with the joiner:
// the log streams to it from epoch e on.
func (p *primary) stopAndCopy(ctx context.Context, e uint64, at *vm.Boundary, t *transfer) error {
	pause := time.Now()
	ram := at.RAM()
	var msgs []epoch.Message
	for pg := 0; pg < len(t.hashes); {
		if xxh3.Hash(ram[pg*joinPage:(pg+1)*joinPage]) == t.hashes[pg] {
			pg++
			continue
		}
		start := pg // a run of changed pages, sent together
		for pg < len(t.hashes) && (pg-start)*joinPage < joinChunk && xxh3.Hash(ram[pg*joinPage:(pg+1)*joinPage]) != t.hashes[pg] {
			pg++
		}
		data := append([]byte(nil), ram[start*joinPage:pg*joinPage]...)
		msgs = append(msgs, epoch.Message{Type: epoch.TypeJoinRAM, JoinRAM: &epoch.JoinRAM{Offset: uint64(start * joinPage), Data: data}})
		t.report.DirtyBytes += uint64(len(data))
	}
	state, err := at.State()
	if err != nil {
		return err
	}
	hash, err := at.Hash()
	if err != nil {
		return err
	}
	p.mu.Lock()
	clock := p.live.Now()
	p.mu.Unlock()
	msgs = append(msgs, epoch.Message{Type: epoch.TypeJoinState, JoinState: &epoch.JoinState{
		Epoch: e - 1, Answers: at.Answers(), Hash: hash, Clock: clock, State: state}})
	if err := t.link.Send(msgs...); err != nil {
		return err
	}
	t.report.Bytes += t.report.DirtyBytes
	t.report.AtEpoch = e - 1
	t.report.PauseMS = ms(time.Since(pause))
	t.report.PrecopyMS = ms(pause.Sub(t.started))
	p.mu.Lock()
	p.proto.Join(e-1, at.Answers())
	p.link = t.link
	p.report.Joins = append(p.report.Joins, t.report)
	p.mu.Unlock()
	p.watch(ctx, t.link)
	p.log.Info("backup joined", zap.Uint64("at_epoch", e-1), zap.Float64("pause_ms", t.report.PauseMS),
		zap.Float64("precopy_ms", t.report.PrecopyMS), zap.Uint64("bytes", t.report.Bytes), zap.Uint64("dirty_bytes", t.report.DirtyBytes))
	return nil
}

// receiveState takes a state transfer on a joining backup's link.
func receiveState(l *Link, ramSize uint64) ([]byte, *epoch.JoinState, error) {
	ram := make([]byte, ramSize)
	for {
		m, err := l.Recv()
		if err != nil {
			return nil, nil, fmt.Errorf("receiving the primary's state: %w", err)
		}
		switch m.Type {
		case epoch.TypeJoinRAM:
			j := m.JoinRAM
			if j.Offset > ramSize || uint64(len(j.Data)) > ramSize-j.Offset {
				return nil, nil, fmt.Errorf("state transfer: RAM piece at %#x+%d lies outside %d bytes of RAM", j.Offset, len(j.Data), ramSize)
			}
			copy(ram[j.Offset:], j.Data)
		case epoch.TypeJoinState:
			return ram, m.JoinState, nil
		case epoch.TypeHeartbeat:
		default:
			return nil, nil, fmt.Errorf("state transfer: unexpected %v message", m.Type)
		}
	}
}
