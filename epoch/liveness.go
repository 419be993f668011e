package epoch

// Liveness is the failure detector of one link, counted in ticks rather
// than read from a clock: the caller ticks it once per heartbeat interval,
// saying whether the peer was heard from since the tick before. The peer
// is presumed dead once timeout ticks in a row pass with nothing heard, so
// the silence it detects spans at least timeout intervals from the last
// frame (which arrived before the tick that heard it).
//
// Ticks make the clock assumptions explicit and few. A clock step cannot
// declare a live peer dead, since no clock is read. A replica that is
// itself paused (SIGSTOP, a loaded host) misses ticks instead of counting
// them, so waking up does not by itself declare dead a peer whose frames
// wait unread in the socket: the receiver reads them and the next tick
// hears them. A slow ticker only delays detection; it never hastens it.
type Liveness struct {
	timeout  uint64
	silent   uint64
	presumed bool
}

// NewLiveness presumes the peer dead after timeout silent ticks (at least
// one).
func NewLiveness(timeout uint64) Liveness {
	return Liveness{timeout: max(timeout, 1)}
}

// TimeoutTicks is how many ticks a timeout spans at one tick per
// interval, rounded up, so that a detector never fires before the
// timeout the user gave.
func TimeoutTicks(timeout, interval int64) uint64 {
	if interval <= 0 || timeout <= 0 {
		return 1
	}
	return uint64((timeout + interval - 1) / interval)
}

// Tick ends one interval, in which the peer was heard from or not, and
// reports whether the peer is presumed dead now. It reports it once: the
// caller acts on the presumption, and a later frame does not bring the
// peer back.
func (l *Liveness) Tick(heard bool) (presumedDead bool) {
	if l.presumed {
		return false
	}
	if heard {
		l.silent = 0
		return false
	}
	l.silent++
	if l.silent >= l.timeout {
		l.presumed = true
		return true
	}
	return false
}

// Silent is the number of ticks since the peer was last heard.
func (l *Liveness) Silent() uint64 { return l.silent }
