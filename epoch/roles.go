package epoch

import "fmt"

// The rules cited below are those of docs/protocol.md (after
// ../shared/DESIGN.md, "The protocol").

// Mode says when a primary may start its next epoch.
type Mode int

// Protocol modes.
const (
	// Bounded lets the primary run up to MaxLag epochs ahead of the
	// backup's execution, as acknowledged; it never waits on a round trip
	// for an epoch that produced no output (rule 2, default). Bounding
	// execution, not just receipt, bounds the replay a failover needs.
	Bounded Mode = iota
	// Strict is the paper's variant: epoch E+1 starts only once the
	// backup acknowledged E's end.
	Strict
)

// ParseMode reads "bounded" or "strict".
func ParseMode(s string) (Mode, error) {
	switch s {
	case "bounded", "default", "":
		return Bounded, nil
	case "strict":
		return Strict, nil
	}
	return 0, fmt.Errorf("protocol %q: want bounded or strict", s)
}

func (m Mode) String() string {
	if m == Strict {
		return "strict"
	}
	return "bounded"
}

// OutputKind says what an output is.
type OutputKind uint8

// Kinds of output.
const (
	// Console is a console byte; Seq numbers them, and a sink drops a
	// sequence number it already wrote, so a new primary may re-emit.
	Console OutputKind = iota
	// DiskWrite is a write to the shared disk. It is never re-emitted: an
	// operation in flight at a failover completes as uncertain and the
	// guest reissues it (rule 5).
	DiskWrite
)

// Output is something the guest sent out, placed in the log: it was
// produced during Epoch, after Answers environment answers. Ref is the
// caller's own description of it (the protocol only orders it).
type Output struct {
	Kind    OutputKind
	Seq     uint64
	Epoch   uint64
	Answers uint64
	Port    uint32
	Value   uint32
	// Data is a chunk of console bytes (a Linux program's write), whose
	// last byte Seq numbers; empty for a one-byte console output (Value).
	Data []byte
	Ref  any
}

// Actions is what a step asks of the caller: outputs that may now leave,
// in sequence order, then messages to send, in order; and the decisions
// of rules 5 to 7, which the caller carries out.
type Actions struct {
	Send    []Message
	Release []Output
	// Claim asks the caller to claim generation Claim at the arbiter
	// (rule 7) and to step the answer back with Claimed.
	Claim uint64
	// Alone is why a primary now goes on without its backup (rule 6); a
	// shared disk's fence must be raised to its generation before the
	// released outputs reach the disk.
	Alone string
	// TakeOver is why a backup is now the primary (rule 5); Release holds
	// the outputs it re-emits, and a shared disk's fence must be raised to
	// its generation before its first write.
	TakeOver string
	// Stop says this replica may not act as the primary any more: it
	// releases nothing more and stops.
	Stop error
}

// Primary is the primary's side of the protocol.
type Primary struct {
	mode      Mode
	maxLag    uint64
	alone     bool
	arb       *Arbitration // rule 7's state; nil without an arbiter
	suspicion string       // why the backup is presumed lost (a claim is under way)
	stopped   error        // fenced or failed: nothing is released any more
	ended     bool         // the run is over: a link that closes is no loss
	final     *Goodbye     // this primary's end of the run, once sent
	backupEnd *Goodbye     // the backup's verdict
	sentEpoch uint64       // last epoch end logged
	sentAns   uint64       // last answer logged
	acked     Ack
	held      []Output
	released  uint64 // highest output sequence number released
	announced uint64 // highest watermark sent to the backup
}

// NewPrimary returns a primary paired with a backup. maxLag bounds, in
// Bounded mode, how many epochs may be logged but not acknowledged.
func NewPrimary(mode Mode, maxLag uint64) *Primary {
	if mode == Strict {
		maxLag = 0
	}
	return &Primary{mode: mode, maxLag: maxLag}
}

// Alone reports whether the primary has lost its backup.
func (p *Primary) Alone() bool { return p.alone }

// Arbitrate makes the primary act alone only under rule 7: it runs under
// generation gen, and going on without its backup needs the next one.
func (p *Primary) Arbitrate(gen uint64) { p.arb = &Arbitration{held: gen} }

// Generation is the generation the primary runs under (0 without an
// arbiter).
func (p *Primary) Generation() uint64 { return p.arb.Held() }

// Stopped is why the primary may release nothing more (fenced, or its
// console failed), or nil.
func (p *Primary) Stopped() error { return p.stopped }

// Stop makes the primary release nothing more, and announce no release
// watermark: a fence (another replica holds a newer generation) or a
// sink that failed. What it still holds stays with the backup, which
// emits it if it takes over. The first reason sticks.
func (p *Primary) Stop(why error) Actions {
	if p.stopped != nil {
		return Actions{}
	}
	p.stopped = why
	return Actions{Stop: why}
}

// Suspect says the backup is presumed lost: its link closed, broke or fell
// silent (reason says which). Without an arbiter the primary goes on alone
// at once (rule 6); with one it must first win the next generation (rule
// 7), and until it does it releases nothing, since the backup may be
// taking over. A link that ends after the run, or after the backup's
// verdict, is no loss.
func (p *Primary) Suspect(reason string) Actions {
	if p.alone || p.stopped != nil || p.ended || p.backupEnd != nil {
		return Actions{}
	}
	if p.arb == nil {
		act := p.BackupLost()
		act.Alone = reason
		return act
	}
	gen, ok := p.arb.Claim()
	if !ok {
		return Actions{} // a claim is under way, or was lost
	}
	p.suspicion = reason
	return Actions{Claim: gen}
}

// Claimed takes the arbiter's answer to the claim Suspect asked for: won,
// the primary goes on alone; any error fences it. The answer must be
// settled: a claim whose answer was lost (ClaimAnswered is false) is
// decided by SettleClaim first, so that a compare-and-swap that landed
// is not taken for a loss. Lost, the error says who holds the
// generation; unknown (ErrClaimUnknown), the primary stops all the same,
// since the backup may have won.
func (p *Primary) Claimed(gen uint64, err error) Actions {
	if p.arb == nil {
		return p.Stop(fmt.Errorf("arbitration: generation %d claimed without an arbiter", gen))
	}
	if err != nil {
		p.arb.Lost(err)
		return p.Stop(fmt.Errorf("the backup was lost (%s) and this primary may not go on alone: %w", p.suspicion, err))
	}
	if err := p.arb.Won(gen); err != nil {
		return p.Stop(err)
	}
	if p.alone || p.stopped != nil {
		return Actions{}
	}
	act := p.BackupLost()
	act.Alone = p.suspicion
	return act
}

// MayFinish reports whether the run's end may be announced: every output
// is released (acknowledged, or the backup lost), and nothing stopped the
// primary.
func (p *Primary) MayFinish() bool {
	return p.stopped == nil && (p.alone || len(p.held) == 0)
}

// Finish ends the run with this primary's own end (its exit code and
// final state hash): the goodbye goes to the backup, which replays to the
// same end and answers with its own (Verdict). Alone, nothing is sent.
func (p *Primary) Finish(g Goodbye) Actions {
	p.final = &g
	if p.alone || p.stopped != nil {
		return Actions{}
	}
	return Actions{Send: []Message{{Type: TypeGoodbye, Goodbye: &g}}}
}

// End says the run is over: a link that closes now is no loss.
func (p *Primary) End() { p.ended = true }

// Ended reports whether the run is over.
func (p *Primary) Ended() bool { return p.ended }

// BackupFinished takes the backup's goodbye: its replay reached the end.
func (p *Primary) BackupFinished(g Goodbye) { p.backupEnd = &g }

// Verdict is the backup's end once it arrived (nil before), and how it
// differs from this primary's end: the exit code or the final hash. A
// backup that ends differently diverged; "" is a match. A backup's end
// that arrives before this primary finished is a divergence too: the
// backup answers the primary's goodbye, never anticipates it.
func (p *Primary) Verdict() (theirs *Goodbye, divergence string) {
	g := p.backupEnd
	switch {
	case g == nil:
		return nil, ""
	case p.final == nil:
		return g, "the backup ended its replay before the primary's end"
	case g.ExitCode != p.final.ExitCode || g.Hash != p.final.Hash:
		return g, fmt.Sprintf("backup ended with final hash %x exit %d, primary %x exit %d", g.Hash, g.ExitCode, p.final.Hash, p.final.ExitCode)
	}
	return g, ""
}

// Acked returns the backup's latest acknowledgement.
func (p *Primary) Acked() Ack { return p.acked }

// Held is the number of outputs waiting for an acknowledgement.
func (p *Primary) Held() int { return len(p.held) }

// Released is the highest output sequence number released.
func (p *Primary) Released() uint64 { return p.released }

// Answer logs an environment answer: it is sent as it happens (rule 1).
func (p *Primary) Answer(a Answer) Actions {
	p.sentAns = a.Seq
	if p.alone {
		return Actions{}
	}
	return Actions{Send: []Message{{Type: TypeAnswer, Answer: &a}}}
}

// EndEpoch logs the end of an epoch; its interrupts are delivered only
// after this record is logged (rule 2).
func (p *Primary) EndEpoch(e EpochEnd) Actions {
	p.sentEpoch = e.Epoch
	if p.alone {
		return Actions{}
	}
	return Actions{Send: []Message{{Type: TypeEpochEnd, EpochEnd: &e}}}
}

// MayStart reports whether epoch may begin: in Strict mode once the
// backup holds epoch-1's end, in Bounded mode while the backup has executed
// all but at most MaxLag of the epochs before it (rule 2). A primary alone
// never waits (rule 6).
func (p *Primary) MayStart(epoch uint64) bool {
	if p.alone || epoch == 0 {
		return true
	}
	if p.mode == Strict {
		return epoch-1 <= p.acked.Epoch
	}
	return epoch-1 <= p.acked.Executed+p.maxLag
}

// covered reports whether the backup holds every record before o.
func (p *Primary) covered(o Output) bool {
	return p.acked.Answers >= o.Answers && p.acked.Epoch+1 >= o.Epoch
}

// MayCommit reports whether an effect the guest waits on (a Linux
// program's file write, unlink, rename, mkdir: its result is the answer)
// may be performed now, during epoch after answers answers: once the
// backup holds every record before it, as an output needs (rule 3b). So
// a failover re-executes at most the last such effect, whose answer the
// backup may lack; the host side resolves that one (docs/linux.md).
func (p *Primary) MayCommit(epoch, answers uint64) bool {
	return p.alone || p.covered(Output{Epoch: epoch, Answers: answers})
}

// Output asks to release o. It leaves at once when the backup holds every
// record before it (or there is no backup); otherwise it is held until an
// acknowledgement covers it (rule 3).
func (p *Primary) Output(o Output) Actions {
	if p.stopped != nil {
		return Actions{} // never to leave from here: the backup keeps it
	}
	if len(p.held) == 0 && (p.alone || p.covered(o)) {
		return p.release([]Output{o})
	}
	p.held = append(p.held, o)
	return Actions{}
}

func (p *Primary) release(outs []Output) Actions {
	if len(outs) == 0 || p.stopped != nil {
		return Actions{}
	}
	act := Actions{Release: outs}
	for _, o := range outs {
		if o.Kind == Console {
			p.released = o.Seq
		}
	}
	if !p.alone && p.released > p.announced {
		p.announced = p.released
		act.Send = append(act.Send, Message{Type: TypeRelease, Release: &Release{Output: p.released}})
	}
	return act
}

// Ack takes the backup's acknowledgement and releases what it covers
// (rule 3). An acknowledgement of records never sent is a protocol error.
func (p *Primary) Ack(a Ack) (Actions, error) {
	if a.Epoch > p.sentEpoch || a.Answers > p.sentAns || a.Executed > a.Epoch {
		return Actions{}, fmt.Errorf("backup acknowledged epoch %d answer %d executed %d, but only epoch %d answer %d were sent", a.Epoch, a.Answers, a.Executed, p.sentEpoch, p.sentAns)
	}
	if a.Epoch < p.acked.Epoch || a.Answers < p.acked.Answers || a.Executed < p.acked.Executed {
		return Actions{}, nil // stale: acknowledgements only grow
	}
	p.acked = a
	n := 0
	for n < len(p.held) && p.covered(p.held[n]) {
		n++
	}
	outs := p.held[:n:n]
	p.held = p.held[n:]
	return p.release(outs), nil
}

// Join pairs a primary that runs alone with a backup that received its
// state at the end of epoch, after answers answers: the log streams to it
// from there (rule 6).
func (p *Primary) Join(epoch, answers uint64) {
	p.alone = false
	p.backupEnd, p.suspicion = nil, ""
	p.sentEpoch, p.sentAns = epoch, answers
	p.acked = Ack{Epoch: epoch, Answers: answers, Executed: epoch}
	p.announced = p.released
}

// BackupLost makes the primary go on alone: it releases what it held and
// never waits again (rule 6).
func (p *Primary) BackupLost() Actions {
	p.alone = true
	outs := p.held
	p.held = nil
	return p.release(outs)
}

// Backup is the backup's side of the protocol.
type Backup struct {
	executed  uint64 // last epoch executed
	ends      uint64 // last epoch end held
	answers   uint64 // last answer held
	acked     Ack    // last acknowledgement sent
	watermark uint64 // the primary's output-release watermark
	pending   []Output
	primary   bool // failed over: now the primary
	done      bool // the primary said goodbye
	exitCode  uint32
	stopped   string       // the goodbye's reason for a run that ended without power-off
	arb       *Arbitration // rule 7's state; nil without an arbiter
	suspicion string       // why the primary is presumed dead (a claim is under way)
	stepDown  error        // the claim was lost or its outcome is unknown: never take over
	ended     bool         // this replica's run is over: never take over
	linkGone  bool         // the primary's link is gone, and what follows is decided
}

// NewBackup returns a backup that holds nothing yet.
func NewBackup() *Backup { return &Backup{} }

// NewJoinedBackup returns a backup that starts from a state transfer at the
// end of epoch, after answers answers, with the primary's release
// watermark.
func NewJoinedBackup(epoch, answers uint64) *Backup {
	return &Backup{ends: epoch, answers: answers, executed: epoch, acked: Ack{Epoch: epoch, Answers: answers, Executed: epoch}}
}

// Held returns the last epoch end and answer held.
func (b *Backup) Held() (epoch, answers uint64) { return b.ends, b.answers }

// Watermark is the primary's last announced output-release watermark.
func (b *Backup) Watermark() uint64 { return b.watermark }

// PrimaryDone reports whether the primary ended the run on purpose, and
// with which exit code.
func (b *Backup) PrimaryDone() (bool, uint32) { return b.done, b.exitCode }

// PrimaryStopped is why the primary's run ended without a power-off (a
// guest fault, the epoch budget), or "" if it powered off or goes on. A
// backup replays to the same stop and does not take over.
func (b *Backup) PrimaryStopped() string { return b.stopped }

// Receive takes one message from the primary. Answers and epoch ends must
// arrive in order; anything else means the link or the primary is broken.
// It returns the message to log for replay (nil for control messages).
func (b *Backup) Receive(m Message) (*Message, error) {
	switch m.Type {
	case TypeAnswer:
		if m.Answer.Seq != b.answers+1 {
			return nil, fmt.Errorf("answer %d out of order: expected %d", m.Answer.Seq, b.answers+1)
		}
		b.answers = m.Answer.Seq
		return &m, nil
	case TypeEpochEnd:
		e := m.EpochEnd
		if e.Epoch != b.ends+1 || e.Answers != b.answers {
			return nil, fmt.Errorf("end of epoch %d after %d answers out of order: expected epoch %d after %d answers", e.Epoch, e.Answers, b.ends+1, b.answers)
		}
		b.ends = e.Epoch
		return &m, nil
	case TypeRelease:
		if m.Release.Output > b.watermark {
			b.watermark = m.Release.Output
		}
		n := 0
		for n < len(b.pending) && b.pending[n].Seq <= b.watermark {
			n++
		}
		b.pending = b.pending[n:]
		return nil, nil
	case TypeGoodbye:
		b.done, b.exitCode, b.stopped = true, m.Goodbye.ExitCode, m.Goodbye.Stopped
		return nil, nil
	case TypeHeartbeat:
		return nil, nil
	}
	return nil, fmt.Errorf("unexpected %v message from the primary", m.Type)
}

// Ack returns the acknowledgement to send for what is held now, or false
// when nothing new is held (acknowledgements are coalesced).
func (b *Backup) Ack() (Message, bool) {
	a := Ack{Epoch: b.ends, Answers: b.answers, Executed: b.executed}
	if a == b.acked {
		return Message{}, false
	}
	b.acked = a
	return Message{Type: TypeAck, Ack: &a}, true
}

// AckAfter is the acknowledgement to send after a frame was received,
// given whether more received frames wait to be decoded: none while they
// do, so that a burst costs one acknowledgement, which covers it all.
func (b *Backup) AckAfter(more bool) (Message, bool) {
	if more {
		return Message{}, false
	}
	return b.Ack()
}

// Executed records that the backup finished executing epoch.
func (b *Backup) Executed(epoch uint64) {
	if epoch > b.executed {
		b.executed = epoch
	}
}

// MayExecute reports whether the backup may run epoch: only once it holds
// that epoch's end, one epoch behind (rule 4), until it fails over. A quiet
// epoch (one that runs without the block clock: no interrupt can become
// deliverable in it, and the guest's own execution fixes its end) may run
// as soon as the one before it has been executed, beside the primary's
// (rule 4a): nothing the primary could still send changes where it ends
// or what it does, and its answers arrive as they happen (rule 1).
func (b *Backup) MayExecute(epoch uint64, quiet bool) bool {
	if b.primary || epoch <= b.ends {
		return true
	}
	return quiet && epoch == b.ends+1 && b.executed == b.ends
}

// Output takes an output the backup's own replay produced. A backup
// performs no output (rule 4) but keeps those past the primary's watermark,
// to re-emit them if it takes over (rule 5); once primary, it releases.
func (b *Backup) Output(o Output) Actions {
	if o.Kind != Console {
		if b.primary {
			return Actions{Release: []Output{o}}
		}
		return Actions{} // a backup performs no I/O; see DiskWrite
	}
	if b.primary {
		if o.Seq <= b.watermark {
			return Actions{}
		}
		return Actions{Release: []Output{o}}
	}
	if o.Seq > b.watermark {
		b.pending = append(b.pending, o)
	}
	return Actions{}
}

// FailOver makes the backup the primary: from now on it executes without
// waiting for epoch ends, and it re-emits every output it produced past the
// last watermark it saw (rule 5).
func (b *Backup) FailOver() Actions {
	b.primary = true
	outs := b.pending
	b.pending = nil
	return Actions{Release: outs}
}

// IsPrimary reports whether the backup has taken over.
func (b *Backup) IsPrimary() bool { return b.primary }

// Arbitrate makes the backup take over only under rule 7: the run is at
// generation gen, and a takeover needs the next one.
func (b *Backup) Arbitrate(gen uint64) { b.arb = &Arbitration{held: gen} }

// Generation is the generation the backup runs under (0 without an
// arbiter): the run's, or the one it won by taking over.
func (b *Backup) Generation() uint64 { return b.arb.Held() }

// SteppedDown is why this replica may never take over (its claim of the
// next generation was lost, or its outcome is unknown), or nil.
func (b *Backup) SteppedDown() error { return b.stepDown }

// Suspect says the primary is presumed dead: its link closed, broke or
// fell silent (reason says which). Without an arbiter the backup takes
// over at once (rule 5); with one it must first win the next generation
// (rule 7). A primary that said goodbye is finishing, not dead; a replica
// whose own run ended, or that already took over or stepped down, has
// nothing to decide.
//
// The link counts as gone (LinkGone) once the suspicion is decided: at
// once, or when the claim is answered. While a claim is under way a
// second suspicion (the link's end and its silence both suspect) decides
// nothing and leaves the link standing, so that a replay waiting for the
// log never takes the link's end for the end of the run.
func (b *Backup) Suspect(reason string) Actions {
	if b.Claiming() {
		return Actions{}
	}
	if b.done || b.primary || b.ended || b.stepDown != nil {
		b.linkGone = true
		return Actions{}
	}
	if b.arb == nil {
		b.linkGone = true
		act := b.FailOver()
		act.TakeOver = reason
		return act
	}
	gen, ok := b.arb.Claim()
	if !ok {
		b.linkGone = true
		return Actions{}
	}
	b.suspicion = reason
	return Actions{Claim: gen}
}

// LinkGone reports whether the primary's link is gone and what follows
// decided: a takeover, a step down, or nothing (the run is ending).
func (b *Backup) LinkGone() bool { return b.linkGone }

// Claimed takes the arbiter's answer to the claim Suspect asked for,
// settled as for Primary.Claimed: won, the backup takes over; any error
// and it steps down for good. The error says only what the register
// holds (who won, or that the outcome is unknown), never that the
// primary went on: the holder of the generation may have stopped since.
func (b *Backup) Claimed(gen uint64, err error) Actions {
	b.linkGone = true
	if b.arb == nil {
		err = fmt.Errorf("arbitration: generation %d claimed without an arbiter", gen)
	} else if err == nil {
		err = b.arb.Won(gen)
	} else {
		b.arb.Lost(err)
		err = fmt.Errorf("not taking over: %w", err)
	}
	if err != nil {
		b.stepDown = err
		return Actions{Stop: err}
	}
	if b.done || b.primary || b.ended {
		return Actions{} // the primary finished meanwhile: nothing to take over
	}
	act := b.FailOver()
	act.TakeOver = b.suspicion
	return act
}

// Claiming reports whether a claim Suspect asked for is still unanswered.
func (b *Backup) Claiming() bool { return b.arb != nil && b.arb.Claiming() }

// End says this replica's own run is over (finished, stopped or
// diverged): it never takes over now.
func (b *Backup) End() { b.ended = true }
