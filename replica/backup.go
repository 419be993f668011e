package replica

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"hvft/epoch"
	"hvft/vm"
	"hvft/vm/linux"
	"hvft/vm/uc"
)

// BackupOptions configure the backup.
type BackupOptions struct {
	Options
	Primary        string        // the primary's address
	ConnectTimeout time.Duration // how long to keep trying to reach it and complete the handshake
	// Join joins a primary that is already running, by state transfer.
	Join bool
	// Listener, if set, takes joining backups once this replica has
	// taken over; Mode and MaxLag are then its protocol.
	Listener net.Listener
	Mode     epoch.Mode
	MaxLag   uint64

	// handshake, in tests, bounds each attempt's wait for the primary's
	// welcome (0: handshakeTimeout).
	handshake time.Duration
}

// backup is the backup role's shared state. mu guards everything below it;
// cond signals new records, failover and the end of the link.
type backup struct {
	opt   BackupOptions
	log   *zap.Logger
	link  *Link
	mu    sync.Mutex
	cond  *sync.Cond
	proto *epoch.Backup
	queue []vm.Record
	// outq holds released outputs for writeOut; sinkMu orders its writers.
	outq    []epoch.Output
	sinkMu  sync.Mutex
	linkEnd bool // the link is gone (closed, corrupt, or goodbye)
	// The state transfer a joining backup starts from.
	joined  *epoch.JoinState
	joinRAM []byte
	// as is this replica's primary side once it has gone live: it records,
	// applies the output rule and serves joining backups. going is its
	// preparation, from the takeover on.
	as    *primary
	going *goingLive
	ctx   context.Context
	// stopRun ends the run: a fenced takeover stops with it.
	stopRun context.CancelFunc
	report  Report
	fo      *Failover
	foStart time.Time
	execd   uint64 // last epoch executed

	// Touched only on the machine thread.
	board     *vm.Board
	replay    *vm.Replay
	live      *vm.Live
	lastClock uint64
	// linuxInfo reads a Linux program's state (what it read of standard
	// input, its AT_RANDOM) for going live.
	linuxInfo func() vm.LinuxInfo
	lastEnd   *vm.EpochEnd // the primary's last epoch end replayed
	compared  uint64       // its state hashes compared with this replica's, equal
}

// errPrimaryStopped ends a replay that reached the point where the
// primary's run stopped without a power-off.
var errPrimaryStopped = errors.New("the primary's run stopped")

// RunBackup connects to the primary and replays its log one epoch behind,
// comparing state hashes at every epoch end; if the primary dies it
// finishes what it holds and goes on as the primary.
func RunBackup(ctx context.Context, opt BackupOptions) (*Report, error) {
	opt.defaults()
	if opt.ConnectTimeout <= 0 {
		opt.ConnectTimeout = 30 * time.Second
	}
	if err := opt.Machine.identifyDisk(); err != nil {
		return nil, err
	}
	if opt.Arbiter != nil {
		id, err := arbiterIdentity(ctx, opt.Arbiter)
		if err != nil {
			return nil, err
		}
		opt.Machine.ArbiterID = id
	}
	start := time.Now()
	b := &backup{opt: opt, log: opt.Log, proto: epoch.NewBackup()}
	b.cond = sync.NewCond(&b.mu)
	b.report.Role, b.report.Engine = "backup", uc.Version()
	dctx, cancel := context.WithTimeout(ctx, opt.ConnectTimeout)
	link, advertised, err := dialPrimary(dctx, opt.Primary, opt.Machine.wireConfig, opt.Machine.checkProof, opt.Join, opt.Auth, opt.handshake, b.log)
	cancel()
	if err != nil {
		return nil, err
	}
	b.link = link
	b.log.Info("connected to the primary", zap.String("primary", opt.Primary), zap.Bool("join", opt.Join))
	if opt.Arbiter == nil && advertised != "" {
		// The primary arbitrates on this host by default: so does its
		// backup, and the backup's own joiners after a takeover.
		arb, err := AdoptArbiter(advertised)
		if err != nil {
			link.Close()
			return nil, err
		}
		defer arb.Close()
		opt.Arbiter, opt.Advertise = arb, advertised
		b.opt = opt
		b.log.Info("arbitrating on the primary's default arbiter", zap.String("arbiter", advertised))
	}
	var gen uint64
	if opt.Arbiter != nil {
		// The primary claimed the run's generation before it accepted
		// this replica: that is the one a takeover must move on from.
		var err error
		gen, _, err = opt.Arbiter.Current(ctx)
		if err == nil && gen == 0 {
			err = fmt.Errorf("the arbiter %s holds no generation: does the primary use the same --arbiter?", opt.Arbiter)
		}
		if err != nil {
			link.Close()
			return nil, err
		}
	}
	if opt.Join {
		start := time.Now()
		// The transfer has a failure detector too: a primary stopped in
		// the middle of it would leave this replica waiting for ever. The
		// heartbeats also tell the primary that this replica lives.
		hctx, stopHeartbeat := context.WithCancel(ctx)
		var silent atomic.Pointer[string]
		go heartbeat(hctx, link, opt.Heartbeat, opt.FailureTimeout, func(reason string) bool {
			silent.Store(&reason)
			link.Close()
			return true
		})
		ram, js, err := receiveState(link, opt.Machine.Config.RAMSize)
		stopHeartbeat()
		if err != nil {
			if why := silent.Load(); why != nil {
				err = fmt.Errorf("the primary went silent during the state transfer (%s): %w", *why, err)
			}
			link.Close()
			return nil, err
		}
		b.proto = epoch.NewJoinedBackup(js.Epoch, js.Answers)
		b.joined, b.joinRAM, b.lastClock, b.execd = js, ram, js.Clock, js.Epoch
		b.report.Joins = []Join{{AtEpoch: js.Epoch, PrecopyMS: ms(time.Since(start)), Bytes: uint64(len(ram))}}
		b.log.Info("received the primary's state", zap.Uint64("at_epoch", js.Epoch), zap.Duration("took", time.Since(start)))
	}
	if gen != 0 {
		b.proto.Arbitrate(gen)
	}
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	b.ctx, b.stopRun = ctx, stop
	go b.receive()
	go heartbeat(ctx, link, opt.Heartbeat, opt.FailureTimeout, func(reason string) bool {
		// After a goodbye the primary says nothing more while this
		// replica finishes: keep heartbeating so it knows we live.
		b.mu.Lock()
		done, _ := b.proto.PrimaryDone()
		b.mu.Unlock()
		if done {
			return false
		}
		b.suspect("primary silent: " + reason)
		return true
	})
	stopWake := context.AfterFunc(ctx, func() { b.mu.Lock(); b.cond.Broadcast(); b.mu.Unlock() })
	defer stopWake()
	if b.opt.CPU == nil {
		if b.opt.CPU, err = vm.ProbeCPUModel(); err != nil {
			return nil, err
		}
	}

	res, runErr := b.run(ctx)
	b.mu.Lock()
	if err := b.proto.SteppedDown(); err != nil {
		runErr = err
	}
	b.mu.Unlock()
	if p := b.as; p != nil {
		runErr = p.stopErr(runErr)
		if runErr == nil {
			runErr = p.drain(ctx, res.ExitCode, b.finalHash(), "")
			p.endJournal(runErr)
		}
		p.out.close()
		runErr = p.stopErr(runErr)
		p.mu.Lock()
		p.proto.End()
		if p.link != nil {
			p.link.Close()
		}
		b.mu.Lock()
		b.report.OutputsEmitted += p.report.OutputsEmitted
		b.report.DiskWrites += p.report.DiskWrites
		b.report.Joins = append(b.report.Joins, p.report.Joins...)
		b.report.BackupLost = p.report.BackupLost
		if p.report.Divergence != "" {
			b.report.Divergence = p.report.Divergence
		}
		b.mu.Unlock()
		p.mu.Unlock()
	}
	b.mu.Lock()
	b.proto.End()
	// A replay that reached an end the primary reaches too (power-off, or a
	// stop of the guest's) answers the primary's goodbye, which may still
	// be on its way: it follows the release of the last outputs. The wait
	// ends with the goodbye, or with the link (closed, or silent past the
	// failure timeout).
	if !b.proto.IsPrimary() && (runErr == nil || vm.StoppedByGuest(res, runErr) || errors.Is(runErr, errPrimaryStopped)) {
		for !b.linkEnd && ctx.Err() == nil {
			b.cond.Wait()
		}
	}
	b.mu.Unlock()
	if g := b.going; g != nil {
		g.release()
	}
	var div *vm.DivergenceError
	if errors.As(runErr, &div) {
		b.log.Error("DIVERGENCE: this replica no longer matches the primary; stopping",
			zap.Uint64("epoch", div.At.Epoch), zap.Uint64("clock", div.At.Clock),
			zap.String("rip", fmt.Sprintf("%#x", div.At.RIP)), zap.String("detail", div.Detail))
		if err := b.link.Send(epoch.Message{Type: epoch.TypeDivergence, Divergence: &epoch.Divergence{
			Epoch: div.At.Epoch, Clock: div.At.Clock, RIP: div.At.RIP, Detail: div.Detail}}); err != nil {
			b.log.Warn("could not tell the primary of the divergence: the link is gone", zap.Error(err))
		}
	}
	b.mu.Lock()
	done, _ := b.proto.PrimaryDone()
	sameEnd := runErr == nil || vm.StoppedByGuest(res, runErr) || errors.Is(runErr, errPrimaryStopped)
	wasPrimary := b.proto.IsPrimary()
	sendBye := done && sameEnd && !wasPrimary
	finalHash := b.report.FinalHash
	b.mu.Unlock()
	if sendBye {
		// Tell the primary the replay reached the same end.
		final, _ := vm.ParseDigest(finalHash)
		bye := &epoch.Goodbye{ExitCode: res.ExitCode, Hash: final}
		if runErr != nil {
			bye.Stopped = runErr.Error()
		}
		if err := b.link.Send(epoch.Message{Type: epoch.TypeGoodbye, Goodbye: bye}); err != nil {
			b.log.Warn("could not send the primary this replay's verdict: the link is gone", zap.Error(err))
		}
	}
	b.link.CloseAfter(time.Second) // the verdict must reach the primary
	if err := b.opt.Sink.Flush(); err != nil && runErr == nil && wasPrimary {
		// What this replica emitted as the primary did not all leave.
		runErr = fmt.Errorf("flushing the console: %w", err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.report.DurationMS = time.Since(start).Milliseconds()
	b.report.HashesCompared = b.compared
	b.report.BecamePrimary = b.proto.IsPrimary()
	b.report.Failover = b.fo
	if div != nil {
		b.report.Divergence = div.Error()
	}
	if runErr != nil {
		b.report.Error = runErr.Error()
	} else {
		code := int(res.ExitCode)
		b.report.ExitCode = &code
	}
	rep := b.report
	return &rep, runErr
}

func (b *backup) receive() {
	for {
		m, err := b.link.Recv()
		if err != nil {
			b.endLink(err)
			return
		}
		b.mu.Lock()
		rec, err := b.proto.Receive(m)
		if err != nil {
			b.mu.Unlock()
			b.endLink(fmt.Errorf("protocol violation by the primary: %w", err))
			return
		}
		switch {
		case rec == nil:
		case rec.Answer != nil:
			b.queue = append(b.queue, vm.Record{Answer: rec.Answer})
		case rec.EpochEnd != nil:
			b.queue = append(b.queue, vm.Record{End: rec.EpochEnd})
		}
		b.cond.Broadcast()
		ack, send := b.proto.AckAfter(b.link.Buffered())
		done, _ := b.proto.PrimaryDone()
		b.mu.Unlock()
		if send {
			b.link.Send(ack)
		}
		if done {
			b.endLink(nil)
			return
		}
	}
}

// endLink handles the end of the link: after a goodbye the run is
// finishing; otherwise the primary is presumed dead. Marking the link's end
// and failing over happen under one lock, so the machine never sees a
// link that is gone without a decision.
func (b *backup) endLink(err error) {
	b.mu.Lock()
	done, _ := b.proto.PrimaryDone()
	if done {
		b.linkEnd = true
		b.cond.Broadcast()
		b.mu.Unlock()
		b.log.Info("the primary finished the run; replaying to its end")
		return
	}
	b.mu.Unlock()
	if errors.Is(err, epoch.ErrFrame) {
		b.log.Error("corrupt frame from the primary: closing the link", zap.Error(err))
	}
	b.suspect(fmt.Sprintf("link closed: %v", err))
}

// suspect presumes the primary dead (rule 5) and carries out what the
// protocol decides: with an arbiter, first the claim of the next
// generation (rule 7). Lost, or with an outcome that cannot be settled,
// the primary may have gone on without this replica, which then steps
// down instead of becoming a second primary. The
// link's end is marked in the same step as the decision, so the machine
// never sees a link that is gone without one.
func (b *backup) suspect(reason string) {
	b.mu.Lock()
	act := b.proto.Suspect(reason)
	if gen := act.Claim; gen != 0 {
		b.mu.Unlock()
		err := claim(b.ctx, b.opt.Arbiter, gen, b.opt.Holder, b.opt.claimReadBack, b.log)
		b.mu.Lock()
		act = b.proto.Claimed(gen, err)
		if err == nil {
			b.log.Info("won the next generation", zap.Uint64("generation", gen), zap.Stringer("arbiter", b.opt.Arbiter))
		}
	}
	b.linkEnd = b.proto.LinkGone()
	switch {
	case act.Stop != nil:
		b.cond.Broadcast()
		b.mu.Unlock()
		b.log.Error("stepping down", zap.Error(act.Stop), zap.String("reason", reason))
		b.link.Close()
	case act.TakeOver != "":
		b.takeOver(act)
	default:
		b.cond.Broadcast()
		b.mu.Unlock()
	}
}

// takeOver makes this replica the primary (rule 5): it stops waiting for
// epoch ends, re-emits its outputs past the last release watermark, and
// will go live at the first environment instruction without a logged
// answer. mu is held; takeOver unlocks it.
func (b *backup) takeOver(act epoch.Actions) {
	silence := b.link.Silence()
	b.foStart = time.Now()
	held, _ := b.proto.Held()
	b.fo = &Failover{Reason: act.TakeOver, DetectedAfterMS: ms(silence), DetectedUnixMS: b.foStart.UnixMilli(), DetectedUnixNS: b.foStart.UnixNano(),
		EpochsHeld: held, EpochsExecuted: b.execd, Reemitted: len(act.Release)}
	b.emit(act.Release)
	executed := b.execd
	g := &goingLive{ready: make(chan struct{})}
	b.going = g
	b.cond.Broadcast()
	b.mu.Unlock()
	b.link.Close()
	b.writeOut()
	if err := b.opt.Sink.Flush(); err != nil {
		b.log.Error("console sink: flushing the re-emitted outputs", zap.Error(err))
	}
	b.log.Warn("PRIMARY LOST: taking over", zap.String("reason", act.TakeOver), zap.Duration("silent_for", silence),
		zap.Uint64("epochs_held", held), zap.Uint64("epochs_executed", executed), zap.Int("reemitted", len(act.Release)))
	// Built here, while the machine replays what it holds.
	b.prepareLive(g)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// emit queues released console outputs; mu is held. writeOut writes
// them once mu is released. (A backup releases outputs only once it has
// taken over, and disk writes only once it is live, through its primary
// side's outbox: see Out.)
func (b *backup) emit(outs []epoch.Output) {
	b.outq = append(b.outq, consoleOnly(outs)...)
}

// writeOut writes what emit queued, outside mu. sinkMu makes the writers
// (the goroutine that decided the takeover, with the re-emitted outputs,
// and the machine thread, with the ones its replay produces after it)
// take the queue in turn, so the sink sees the outputs in order.
func (b *backup) writeOut() {
	b.sinkMu.Lock()
	defer b.sinkMu.Unlock()
	b.mu.Lock()
	outs := b.outq
	b.outq = nil
	b.mu.Unlock()
	if len(outs) == 0 {
		return
	}
	if err := b.opt.Sink.Emit(outs); err != nil {
		b.log.Error("console sink", zap.Error(err))
	}
	b.mu.Lock()
	b.report.OutputsEmitted += uint64(len(outs))
	b.mu.Unlock()
}

func (b *backup) run(ctx context.Context) (vm.Result, error) {
	mc := b.opt.Machine
	b.replay = vm.NewReplay(ctx, b)
	m, err := vm.New(mc.Config, mc.Image, b, b.log)
	if err != nil {
		return vm.Result{}, err
	}
	defer m.Close()
	defer func() { // before the machine's RAM goes away
		if b.as != nil {
			b.as.abortTransfer()
		}
	}()
	if js := b.joined; js != nil {
		if err := m.Restore(vm.SnapshotStream(mc.Config.RAMSize, js.State, b.joinRAM)); err != nil {
			return vm.Result{}, fmt.Errorf("restoring the primary's state: %w", err)
		}
		b.joinRAM = nil
		got, err := m.Hash()
		if err != nil {
			return vm.Result{}, err
		}
		if got != vm.Digest(js.Hash) {
			return vm.Result{}, &vm.DivergenceError{At: vm.Point{Epoch: js.Epoch}, Seq: js.Answers,
				Detail: fmt.Sprintf("joined state hash %v, the primary's %v", got, vm.Digest(js.Hash))}
		}
		b.mu.Lock()
		b.report.Joins[0].Verified = true
		b.mu.Unlock()
		if n, ok := b.opt.Sink.(joinNotifier); ok {
			n.Joined(js.Epoch)
		}
	}
	res, err := m.Run(ctx, vm.RunOptions{
		EpochLength: mc.EpochBlocks,
		MaxEpochs:   b.opt.MaxEpochs,
		BeforeEpoch: func(ctx context.Context, e uint64, at *vm.Boundary) error {
			if b.as != nil { // set on this thread, in goLive
				return b.as.beforeEpoch(ctx, e, at)
			}
			b.mu.Lock()
			defer b.mu.Unlock()
			// Rule 4: run epoch E only once its end record is held;
			// rule 4a: a quiet epoch may run beside the primary's.
			quiet := at.Quiet()
			for !b.proto.MayExecute(e, quiet) {
				if err := ctx.Err(); err != nil {
					return err
				}
				if err := b.proto.SteppedDown(); err != nil {
					return err
				}
				if b.linkEnd && !b.proto.IsPrimary() {
					if why := b.proto.PrimaryStopped(); why != "" {
						return fmt.Errorf("%w after epoch %d: %s", errPrimaryStopped, e-1, why)
					}
					return fmt.Errorf("the primary finished, but the log ends before epoch %d", e)
				}
				b.cond.Wait()
			}
			return nil
		},
		OnEpoch: func(s vm.Stop) error {
			if b.opt.OnEpoch != nil {
				b.opt.OnEpoch(s)
			}
			b.mu.Lock()
			b.execd = s.Epoch
			b.proto.Executed(s.Epoch)
			primary := b.proto.IsPrimary()
			var ack epoch.Message
			send := false
			if !primary {
				ack, send = b.proto.Ack() // lets a bounded primary go on
			}
			b.mu.Unlock()
			if send {
				b.link.Send(ack)
			}
			if primary {
				if b.as != nil { // live: its outbox writes and flushes
					b.as.out.kick()
				} else if err := b.opt.Sink.Flush(); err != nil {
					return fmt.Errorf("flushing the console: %w", err)
				}
				return b.opt.Sink.Progress(s.Epoch)
			}
			return nil
		},
	})
	st := m.Stats()
	final, herr := m.Hash()
	if herr != nil && err == nil {
		// A run with no final hash cannot be compared with its replica's.
		err = fmt.Errorf("the final state hash: %w", herr)
	}
	b.mu.Lock()
	b.report.Epochs, b.report.QuietEpochs, b.report.TLBMisses, b.report.FinalHash = st.Epochs, st.QuietEpochs, st.TLBMisses, final.String()
	if b.fo != nil && b.fo.ReplayMS == 0 {
		b.fo.ReplayMS = ms(time.Since(b.foStart)) // finished before any live answer was needed
	}
	b.mu.Unlock()
	return res, err
}

// finalHash is the final state hash the run reported.
func (b *backup) finalHash() vm.Digest {
	b.mu.Lock()
	defer b.mu.Unlock()
	d, _ := vm.ParseDigest(b.report.FinalHash)
	return d
}

// Next implements vm.RecordSource over the received log: it waits for the
// next record, and reports io.EOF once the backup has failed over and holds
// nothing more (rule 5: then it goes live).
func (b *backup) Next(ctx context.Context) (vm.Record, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for len(b.queue) == 0 {
		if b.proto.IsPrimary() || b.linkEnd {
			return vm.Record{}, io.EOF
		}
		if err := ctx.Err(); err != nil {
			return vm.Record{}, err
		}
		b.cond.Wait()
	}
	r := b.queue[0]
	b.queue = b.queue[1:]
	if r.End != nil {
		b.lastEnd = r.End
	}
	if rec := b.opt.Record; rec != nil {
		// The backup's log holds every record its run consumed.
		if r.Answer != nil {
			return r, rec.RecordAnswer(*r.Answer)
		}
		return r, rec.RecordEpochEnd(*r.End)
	}
	return r, nil
}

// Attach implements vm.BoardObserver.
func (b *backup) Attach(board *vm.Board) { b.board = board }

// goingLive is what this replica needs to go on as the primary, built
// when the takeover is decided, on the goroutine that decided it: the
// shared disk opened and fenced, a Linux program's host, the primary role
// with its live environment, its acceptor of joining backups. None of it
// is built inside a Unicorn hook, where the switch itself happens.
type goingLive struct {
	ready chan struct{} // closed once built (or failed)
	err   error
	p     *primary
	live  *vm.Live
	disk  *vm.HostDisk
	host  *linux.Host
}

// prepareLive builds the live side of a takeover (see goingLive).
func (b *backup) prepareLive(g *goingLive) {
	defer close(g.ready)
	fail := func(err error) { g.err = fmt.Errorf("taking over: %w", err) }
	// Only now, as the primary, does this replica touch the shared disk.
	disk, err := b.opt.Machine.openDisk()
	if err != nil {
		fail(err)
		return
	}
	g.disk = disk
	p := newPrimary(PrimaryOptions{Options: b.opt.Options, Listener: b.opt.Listener, Mode: b.opt.Mode, MaxLag: b.opt.MaxLag})
	g.p = p
	p.proto.BackupLost() // alone until a backup joins
	b.mu.Lock()
	gen := b.proto.Generation()
	b.mu.Unlock()
	if b.opt.Arbiter != nil {
		p.proto.Arbitrate(gen)
	}
	p.stop = b.stopRun
	if disk != nil {
		// The fence goes up before this replica's first write: a write
		// of the old primary still on its way lands first or not at all.
		if err := p.guardDisk(b.ctx, disk, gen); err != nil {
			fail(err)
			return
		}
	}
	input := b.opt.Input
	host, err := b.opt.Machine.linuxHost(input, nil)
	if err != nil {
		fail(err)
		return
	}
	if host != nil {
		g.host, p.host, input = host, host, nil
		if err := host.EnableJournal(); err != nil {
			fail(err)
			return
		}
	}
	live, err := vm.NewLive(vm.LiveConfig{OnOutput: p.output, Recorder: p, Input: input, CPU: b.opt.CPU, TimerJitter: b.opt.TimerJitter, Disk: disk,
		Host: host, BeforeCommit: p.beforeCommit(b.ctx)})
	if err != nil {
		fail(err)
		return
	}
	g.live, p.live = live, live
	if b.opt.Listener != nil {
		go p.acceptAll(b.ctx)
	}
}

// release closes the live side at the end of the run, whether it went
// live or the replay ended first (closing the outbox again is harmless).
func (g *goingLive) release() {
	<-g.ready
	if g.p != nil {
		g.p.out.close()
	}
	if g.live != nil {
		g.live.Close()
	}
	if g.host != nil {
		g.host.Close()
	}
	if g.disk != nil {
		g.disk.Close()
	}
}

// goLive switches to this host's devices at the first instruction without
// a logged answer (rule 5), inside the hook that asked: it waits for the
// live side the takeover built, and does only what depends on this
// point: the guest clock continues from the last value the guest saw, a
// Linux program's standard input skips what the old primary's program
// read, and the timer restarts from the board's state.
func (b *backup) goLive(at vm.Point) error {
	b.mu.Lock()
	g := b.going
	b.mu.Unlock()
	if g == nil {
		return errors.New("taking over: the log ended, but no takeover was decided")
	}
	<-g.ready
	if g.err != nil {
		return g.err
	}
	p, live := g.p, g.live
	if g.host != nil {
		info := b.linuxInfo()
		if err := g.host.SkipStdin(info.StdinRead); err != nil {
			return fmt.Errorf("taking over: %w", err)
		}
		g.host.SetRunID(info.Random)
		if err := g.host.CheckJournal(); err != nil {
			return fmt.Errorf("taking over: %w", err)
		}
	}
	live.StartClock(b.lastClock)
	b.mu.Lock()
	b.live, b.as = live, p
	b.mu.Unlock()
	live.Resume(b.board) // an operation in flight completes as uncertain
	b.mu.Lock()
	b.fo.Uncertain = live.Uncertain()
	now := time.Now()
	replay := ms(now.Sub(b.foStart))
	b.fo.ReplayMS = replay
	b.fo.LiveUnixMS, b.fo.LiveUnixNS = now.UnixMilli(), now.UnixNano()
	b.fo.LiveAtEpoch, b.fo.LiveAtClock = at.Epoch, at.Clock
	b.mu.Unlock()
	b.log.Warn("live: this replica is now the primary", zap.Uint64("epoch", at.Epoch), zap.Uint64("clock", at.Clock),
		zap.Float64("replay_ms", replay))
	return nil
}

// exhausted reports whether a replay error means "the log is used up and
// the primary is gone": time to go live.
func (b *backup) exhausted(err error) bool {
	if !errors.Is(err, vm.ErrLogExhausted) {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.proto.IsPrimary()
}

// In implements vm.Environment: from the log while it lasts.
func (b *backup) In(at vm.Point, seq uint64, port uint32, size int, local uint64) (uint64, error) {
	if b.live == nil {
		v, err := b.replay.In(at, seq, port, size, local)
		if err == nil && b.opt.mutateAnswer != nil {
			v = b.opt.mutateAnswer(at, port, seq, v)
		}
		if !b.exhausted(err) {
			if err == nil && port == vm.PortClockLo {
				b.lastClock = v
			}
			return v, err
		}
		if err := b.goLive(at); err != nil {
			return 0, err
		}
	}
	return b.live.In(at, seq, port, size, local)
}

// CPUID implements vm.Environment.
func (b *backup) CPUID(at vm.Point, seq uint64, leaf, sub uint32) ([4]uint32, error) {
	if b.live == nil {
		r, err := b.replay.CPUID(at, seq, leaf, sub)
		if !b.exhausted(err) {
			return r, err
		}
		if err := b.goLive(at); err != nil {
			return r, err
		}
	}
	return b.live.CPUID(at, seq, leaf, sub)
}

// AttachLinux implements vm.LinuxObserver.
func (b *backup) AttachLinux(info func() vm.LinuxInfo) { b.linuxInfo = info }

// Host implements vm.Environment: a Linux program's request, from the log.
func (b *backup) Host(at vm.Point, seq uint64, c linux.Call) (linux.Result, error) {
	if b.live == nil {
		r, err := b.replay.Host(at, seq, c)
		if !b.exhausted(err) {
			return r, err
		}
		if err := b.goLive(at); err != nil {
			return r, err
		}
	}
	return b.live.Host(at, seq, c)
}

// Out implements vm.Environment: the board keeps its state either way;
// console bytes go to the protocol, which holds them while this replica is
// a backup and releases them once it is the primary.
//
// A disk operation before going live is never performed here: a backup
// performs no I/O, and one still in flight when this replica goes live
// completes as uncertain (rule 5).
func (b *backup) Out(o vm.Output, effect vm.Effect, board *vm.Board) error {
	if b.live != nil {
		return b.live.Out(o, effect, board)
	}
	if effect == vm.EffectConsole || effect == vm.EffectStream {
		return b.output(o)
	}
	return nil
}

func (b *backup) output(o vm.Output) error {
	b.mu.Lock()
	b.emit(b.proto.Output(wireOutput(o)).Release)
	b.mu.Unlock()
	b.writeOut()
	return nil
}

// EndEpoch implements vm.Environment: the boundary is checked against the
// primary's record (hash included), or, past the log, taken live.
func (b *backup) EndEpoch(ctx context.Context, end *vm.EpochEnd, wake vm.Wake) ([]vm.Event, error) {
	if b.live == nil {
		evs, err := b.replay.EndEpoch(ctx, end, wake)
		if !b.exhausted(err) {
			if err == nil {
				// Count the primary's hash compared with ours; one that
				// cannot be compared is a divergence, never a match.
				if err = compareHash(b.lastEnd, end); err != nil {
					return nil, err
				}
				b.compared++
			}
			return evs, err
		}
		if err := b.goLive(vm.Point{Epoch: end.Epoch, Clock: end.Clock, RIP: end.RIP}); err != nil {
			return nil, err
		}
	}
	return b.live.EndEpoch(ctx, end, wake)
}
