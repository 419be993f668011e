package replica

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"

	"hvft/epoch"
)

// handshakeTimeout bounds each side's wait for the other's first message.
const handshakeTimeout = 5 * time.Second

// Link is one replication connection: framed messages both ways. Send
// never blocks on the network: it queues encoded frames for a writer
// goroutine, which writes and flushes whatever has accumulated. So no
// caller ever holds a protocol lock across a blocking write (two peers
// each blocked writing to the other while holding the lock their reader
// needs would deadlock), and a burst of messages costs one write. One
// goroutine receives.
type Link struct {
	conn      net.Conn
	r         *bufio.Reader
	mu        sync.Mutex
	cond      *sync.Cond
	pending   []byte // encoded frames not yet written
	writing   bool
	closed    bool
	err       error         // first write error; the link is dead after it
	born      time.Time     // with its monotonic reading
	lastHeard atomic.Int64  // time.Since(born) when last heard from
	frames    atomic.Uint64 // frames received
	sent      atomic.Uint64 // bytes written
	done      chan struct{} // the writer exited
	// writeTimeout bounds one write: a peer that stops reading kills the
	// link instead of stalling the writer forever.
	writeTimeout time.Duration
}

func newLink(conn net.Conn) *Link {
	l := &Link{conn: conn, r: bufio.NewReaderSize(conn, 64<<10), done: make(chan struct{}), writeTimeout: handshakeTimeout, born: time.Now()}
	l.cond = sync.NewCond(&l.mu)
	l.lastHeard.Store(0)
	go l.writer()
	return l
}

// heard counts a frame received, for the failure detector, and stamps the
// monotonic clock (time since the link was made) for the report's
// measure of the silence.
func (l *Link) heard() {
	l.frames.Add(1)
	l.lastHeard.Store(int64(time.Since(l.born)))
}

// Received counts the frames received so far.
func (l *Link) Received() uint64 { return l.frames.Load() }

// Silence is how long since the peer was last heard from (for reports:
// the failure detector counts heartbeat ticks, epoch.Liveness).
func (l *Link) Silence() time.Duration {
	return time.Since(l.born) - time.Duration(l.lastHeard.Load())
}

// BytesSent counts the bytes written to the connection.
func (l *Link) BytesSent() uint64 { return l.sent.Load() }

// Send queues messages; they go out in order.
func (l *Link) Send(msgs ...epoch.Message) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return l.err
	}
	if l.closed {
		return net.ErrClosed
	}
	for _, m := range msgs {
		var err error
		if l.pending, err = epoch.AppendFrame(l.pending, m); err != nil {
			return err
		}
	}
	l.cond.Broadcast()
	return nil
}

func (l *Link) writer() {
	defer close(l.done)
	var buf []byte
	for {
		l.mu.Lock()
		for len(l.pending) == 0 && !l.closed {
			l.writing = false
			l.cond.Broadcast()
			l.cond.Wait()
		}
		if len(l.pending) == 0 {
			l.writing = false
			l.cond.Broadcast()
			l.mu.Unlock()
			return
		}
		buf, l.pending = l.pending, buf[:0]
		l.writing = true
		timeout := l.writeTimeout
		l.mu.Unlock()
		l.conn.SetWriteDeadline(time.Now().Add(timeout))
		n, err := l.conn.Write(buf)
		l.sent.Add(uint64(n))
		if err != nil {
			// The connection stays open for reading: a peer that reset
			// it may have sent frames before (a backup's divergence
			// report, then its close with our heartbeats unread), and
			// those are still to be read. The failure detector or the
			// reader's own error ends the link.
			l.mu.Lock()
			l.err = fmt.Errorf("sending: %w", err)
			l.pending, l.writing = nil, false
			l.cond.Broadcast()
			l.mu.Unlock()
			return
		}
	}
}

// SetWriteTimeout bounds each write to the peer.
func (l *Link) SetWriteTimeout(d time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if d > 0 {
		l.writeTimeout = d
	}
}

// Drain waits, at most timeout, until everything queued has been written.
func (l *Link) Drain(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	stop := time.AfterFunc(timeout, func() { l.mu.Lock(); l.cond.Broadcast(); l.mu.Unlock() })
	defer stop.Stop()
	l.mu.Lock()
	defer l.mu.Unlock()
	for (len(l.pending) > 0 || l.writing) && l.err == nil {
		if time.Now().After(deadline) {
			return fmt.Errorf("sending: %d bytes not written within %v", len(l.pending), timeout)
		}
		l.cond.Wait()
	}
	return l.err
}

// Recv reads the next message. A malformed frame is an error wrapping
// epoch.ErrFrame: the caller closes the link.
func (l *Link) Recv() (epoch.Message, error) {
	m, err := epoch.ReadFrame(l.r)
	if err == nil {
		l.heard()
	}
	return m, err
}

// Buffered reports whether more received bytes wait to be decoded.
func (l *Link) Buffered() bool { return l.r.Buffered() > 0 }

// Close closes the connection at once, dropping anything not yet written;
// a blocked Recv returns.
func (l *Link) Close() error {
	l.mu.Lock()
	l.closed = true
	l.cond.Broadcast()
	l.mu.Unlock()
	return l.conn.Close()
}

// CloseAfter writes what is queued (for at most timeout), then closes.
func (l *Link) CloseAfter(timeout time.Duration) error {
	err := l.Drain(timeout)
	l.Close()
	return err
}

// RemoteAddr names the peer.
func (l *Link) RemoteAddr() string { return l.conn.RemoteAddr().String() }

// RefusedError is the primary's refusal of a backup at the handshake.
type RefusedError struct{ Reason string }

func (e *RefusedError) Error() string { return "the primary refused this backup: " + e.Reason }

// acceptLoop hands every connection on ln to handle until ctx ends or ln
// fails for good; ln is closed when ctx ends. A transient failure (EMFILE,
// ENFILE, ECONNABORTED...) is logged once per run of them and retried
// with a growing pause: one flood of connections must not stop the
// primary from accepting for ever.
func acceptLoop(ctx context.Context, ln net.Listener, log *zap.Logger, handle func(net.Conn)) {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var pause time.Duration
	for {
		conn, err := ln.Accept()
		if ctx.Err() != nil {
			if conn != nil {
				conn.Close()
			}
			return
		}
		if err == nil {
			if pause > 0 {
				log.Info("accepting connections again")
			}
			pause = 0
			handle(conn)
			continue
		}
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if pause == 0 {
			log.Warn("accepting a connection failed; retrying", zap.Error(err))
			pause = 5 * time.Millisecond
		} else if pause *= 2; pause > time.Second {
			pause = time.Second
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(pause):
		}
	}
}

// readHello reads a peer's first message, which must be a Hello.
func (l *Link) readHello(timeout time.Duration) (*epoch.Hello, error) {
	l.conn.SetDeadline(time.Now().Add(timeout))
	defer l.conn.SetDeadline(time.Time{})
	m, err := l.Recv()
	if err != nil {
		return nil, fmt.Errorf("reading hello: %w", err)
	}
	if m.Type != epoch.TypeHello {
		return nil, fmt.Errorf("first message is %v, not hello", m.Type)
	}
	return m.Hello, nil
}

// answerHello sends the Welcome (refused when reason is set). An accepted
// peer must confirm with a heartbeat: a backup that gave up waiting (its
// Hello was still queued when it left) is not taken for a backup.
func (l *Link) answerHello(reason, arbiter, proof string, timeout time.Duration) error {
	l.conn.SetDeadline(time.Now().Add(timeout))
	defer l.conn.SetDeadline(time.Time{})
	if err := l.Send(epoch.Message{Type: epoch.TypeWelcome, Welcome: &epoch.Welcome{Accepted: reason == "", Reason: reason, Arbiter: arbiter, Proof: proof}}); err != nil {
		return err
	}
	if err := l.Drain(timeout); err != nil {
		return err
	}
	if reason != "" {
		return nil
	}
	m, err := l.Recv()
	if err != nil {
		return fmt.Errorf("the accepted peer did not confirm (it gave up?): %w", err)
	}
	if m.Type != epoch.TypeHeartbeat {
		return fmt.Errorf("the accepted peer confirmed with %v, not a heartbeat", m.Type)
	}
	return nil
}

// dialPrimary connects to the primary and presents cfg, retrying until
// ctx ends (--connect-timeout); it returns the link and the arbiter the
// primary advertised (Welcome.Arbiter). The configuration is taken at
// each connection: a console file the primary creates at its start may
// appear only after this replica began.
//
// An attempt that fails in a way that can pass is retried, after a pause
// that grows to dialPauseMax: a primary not listening yet, a connection
// reset or closed before the welcome, a handshake that timed out. A
// primary out of file descriptors leaves connections in its listen queue
// unanswered (or closes them): a joiner that gave up at the first one
// would stay locked out while the primary runs on alone. A refusal (the
// primary's welcome says why) or a peer that is not an hvft primary (a
// corrupt frame, another key) is final at once. handshake bounds each
// attempt's wait for the welcome (0: handshakeTimeout).
//
// verify checks the welcome's proof (Machine.checkProof) before this
// replica confirms; its failure is final.
func dialPrimary(ctx context.Context, addr string, cfg func() epoch.MachineConfig, verify func(proof string) error, join bool, auth *Auth, handshake time.Duration, log *zap.Logger) (*Link, string, error) {
	if handshake <= 0 {
		handshake = handshakeTimeout
	}
	start := time.Now()
	pause := dialPauseMin
	var last error
	attempts := 0
	for ctx.Err() == nil {
		attempts++
		l, arbiter, dialed, err := connectOnce(ctx, addr, cfg, verify, join, auth, handshake)
		if err == nil {
			return l, arbiter, nil
		}
		if dialed && !mayPass(err) {
			return nil, "", err
		}
		if ctx.Err() == nil || last == nil {
			// An attempt cut by the end of ctx says nothing about the
			// primary: the failure before it does.
			last = err
		}
		switch {
		case ctx.Err() != nil:
		case dialed:
			log.Warn("the primary did not complete the handshake; retrying", zap.String("addr", addr), zap.Int("attempt", attempts), zap.Error(err))
		case attempts == 1:
			log.Info("waiting for the primary", zap.String("addr", addr), zap.Error(err))
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
		pause = min(2*pause, dialPauseMax)
	}
	if last == nil {
		last = ctx.Err()
	}
	why := "stopped"
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		why = "the connect timeout ran out"
	}
	return nil, "", fmt.Errorf("no primary at %s took this backup: %s after %d attempts in %v; the last failed: %w",
		addr, why, attempts, time.Since(start).Round(time.Millisecond), last)
}

// The pause between two attempts to reach the primary grows from
// dialPauseMin to dialPauseMax: quick while a primary is starting, and
// no faster than that against one that is overwhelmed.
const (
	dialPauseMin = 100 * time.Millisecond
	dialPauseMax = 500 * time.Millisecond
)

// connectOnce makes one attempt to reach the primary: connect, secure,
// hello and welcome, the wait for the welcome bounded by handshake and by
// ctx. dialed says whether a connection was made (a failure to connect
// at all can always pass: the primary may not be listening yet).
func connectOnce(ctx context.Context, addr string, cfg func() epoch.MachineConfig, verify func(string) error, join bool, auth *Auth, handshake time.Duration) (l *Link, arbiter string, dialed bool, err error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, "", false, err
	}
	// The run's end cuts a handshake under way: closing the connection
	// ends its reads and writes.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	deadline := time.Now().Add(handshake)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if conn, err = auth.secure(ctx, conn, false); err != nil {
		return nil, "", true, err
	}
	l = newLink(conn)
	if arbiter, err = l.hello(cfg(), verify, join, deadline); err != nil {
		l.Close()
		return nil, "", true, err
	}
	if !stop() {
		l.Close()
		return nil, "", true, fmt.Errorf("handshake: %w", ctx.Err())
	}
	return l, arbiter, true, nil
}

// mayPass reports whether a failed handshake may succeed if tried again:
// the connection was reset, closed or timed out before the welcome. A
// refusal, a frame that is not hvft's and a peer with another key are
// answers, and final.
func mayPass(err error) bool {
	var refused *RefusedError
	if errors.As(err, &refused) || errors.Is(err, epoch.ErrFrame) || errors.Is(err, errPeerKey) {
		return false
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.EPIPE) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func (l *Link) hello(cfg epoch.MachineConfig, verify func(string) error, join bool, deadline time.Time) (arbiter string, err error) {
	l.conn.SetDeadline(deadline)
	defer l.conn.SetDeadline(time.Time{})
	if err := l.Send(epoch.Message{Type: epoch.TypeHello, Hello: &epoch.Hello{Config: cfg, Join: join}}); err != nil {
		return "", fmt.Errorf("handshake: %w", err)
	}
	m, err := l.Recv()
	if err != nil {
		return "", fmt.Errorf("handshake: the primary did not answer (if it uses --key-file, this backup needs the same key): %w", err)
	}
	if m.Type != epoch.TypeWelcome {
		return "", fmt.Errorf("handshake: the primary answered %v", m.Type)
	}
	if !m.Welcome.Accepted {
		return "", &RefusedError{Reason: m.Welcome.Reason}
	}
	if verify != nil {
		if err := verify(m.Welcome.Proof); err != nil {
			// Unconfirmed, the primary does not take this replica.
			return "", &RefusedError{Reason: err.Error()}
		}
	}
	// Confirm: the primary takes this replica for its backup only now.
	if err := l.Send(epoch.Message{Type: epoch.TypeHeartbeat}); err != nil {
		return "", fmt.Errorf("handshake: %w", err)
	}
	return m.Welcome.Arbiter, nil
}

// heartbeat sends a heartbeat every interval and runs the link's failure
// detector (epoch.Liveness): the peer is presumed dead once timeout's
// worth of ticks passes with no frame received, and dead says so (or the
// link broke); dead returns whether to stop heartbeating.
func heartbeat(ctx context.Context, l *Link, interval, timeout time.Duration, dead func(reason string) (stop bool)) {
	l.SetWriteTimeout(timeout)
	ticks := epoch.TimeoutTicks(int64(timeout), int64(interval))
	live := epoch.NewLiveness(ticks)
	heard := l.Received()
	// A failed send stops the heartbeats, not the detector: what the peer
	// sent before it reset the connection is still read, and a peer that
	// stopped reading is declared dead by its silence.
	var sendErr error
	// A timer re-armed after each tick, not a ticker: ticks are then at
	// least interval apart however late one is taken, so timeout's worth
	// of ticks never spans less than timeout.
	t := time.NewTimer(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		t.Reset(interval)
		n := l.Received()
		if live.Tick(n != heard) {
			reason := fmt.Sprintf("no message for %d heartbeat intervals of %v (timeout %v; silent for %v)",
				ticks, interval, timeout, l.Silence().Round(time.Millisecond))
			if sendErr != nil {
				reason += "; " + sendErr.Error()
			}
			if dead(reason) {
				return
			}
		}
		heard = n
		if sendErr == nil {
			sendErr = l.Send(epoch.Message{Type: epoch.TypeHeartbeat})
			if errors.Is(sendErr, net.ErrClosed) {
				return
			}
		}
	}
}
