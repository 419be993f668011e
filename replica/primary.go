package replica

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"go.uber.org/zap"

	"hvft/epoch"
	"hvft/vm"
	"hvft/vm/linux"
	"hvft/vm/uc"
)

// Options configure a replica of either role.
type Options struct {
	Machine        Machine
	Heartbeat      time.Duration // interval between heartbeats
	FailureTimeout time.Duration // silence after which the peer is declared dead
	Sink           Sink          // where released console output goes
	Input          io.Reader     // console input (used only while primary)
	CPU            *vm.CPUModel  // CPUID answers; nil probes
	TimerJitter    time.Duration
	MaxEpochs      uint64
	Log            *zap.Logger
	// OnEpoch, if set, sees every epoch this replica executes (on the
	// machine's thread).
	OnEpoch func(vm.Stop)
	// OnStart, if set, is called when the guest starts running (after the
	// handshake), so that a benchmark can time the guest alone.
	OnStart func()
	// Record, if set, receives every record this replica's run consists
	// of (a log file: --record).
	Record vm.Recorder
	// Auth, if set, authenticates and encrypts the replication link.
	Auth *Auth
	// Arbiter, if set, is rule 7's generation register (--arbiter): a
	// replica acts alone only once it has won the next generation there,
	// so two replicas that cannot talk never both act as the primary.
	// Holder names this replica there.
	Arbiter Generations
	Holder  string
	// Advertise is the arbiter a primary names in its welcome, for a
	// backup given none to adopt (AdoptArbiter): the default file arbiter
	// of a pair on one host.
	Advertise string

	// mutateAnswer, in tests, lets a backup answer from its own host.
	mutateAnswer func(at vm.Point, port uint32, seq, v uint64) uint64
	// claimReadBack, in tests, bounds the read-back that settles a claim
	// whose answer was lost (0: the arbiter's timeout).
	claimReadBack time.Duration
}

func (o *Options) defaults() {
	if o.Heartbeat <= 0 {
		o.Heartbeat = 50 * time.Millisecond
	}
	if o.FailureTimeout <= 0 {
		o.FailureTimeout = 500 * time.Millisecond
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
}

// PrimaryOptions configure the primary.
type PrimaryOptions struct {
	Options
	Listener   net.Listener  // where the backup connects; nil: run alone
	BackupWait time.Duration // how long to wait for the backup (0: run alone)
	Mode       epoch.Mode
	MaxLag     uint64 // epochs the backup may lag in Bounded mode
}

// primary is the primary role's shared state. mu guards proto, sink use
// and report counters; cond signals acknowledgements and backup loss.
type primary struct {
	opt    PrimaryOptions
	log    *zap.Logger
	link   *Link
	mu     sync.Mutex
	cond   *sync.Cond
	proto  *epoch.Primary
	report Report
	// out writes released outputs, outside mu and off the machine thread.
	out  *outbox
	live *vm.Live
	// sinkErr is the console sink's failure: nothing is released after it.
	sinkErr error
	// host performs a Linux program's requests (nil for a board guest).
	host  *linux.Host
	epoch uint64 // epoch being executed
	// joins hands accepted joiners to the machine thread; transfer is the
	// state transfer in progress (machine thread only).
	joins    chan *Link
	transfer *transfer
	// awaiting is set while the primary waits for its first backup;
	// firstSlot admits one candidate at a time to that handshake,
	// firstTaken is set once one completed it, and first hands it over.
	awaiting   bool
	handshake  time.Duration // bounds each wait of a peer's handshake
	firstSlot  chan struct{}
	firstTaken bool
	first      chan *Link
	// Why this primary was fenced (rule 7, or the disk's fence).
	fenced error
	// disk is the shared disk once its fence is this primary's.
	disk *vm.HostDisk
	stop context.CancelFunc
}

// ErrBackupDiverged is in a primary's error when a backup of its run
// reported a divergence, mid-run or in its verdict at the end: the guest
// may have powered off, but the replicas were not copies of each other.
var ErrBackupDiverged = errors.New("the backup diverged")

// RunPrimary waits for a backup (or not), then runs the guest as primary:
// every answer and epoch end goes to the backup, outputs leave only under
// the output rule, and a lost backup leaves the primary running alone.
func RunPrimary(ctx context.Context, opt PrimaryOptions) (*Report, error) {
	opt.defaults()
	if err := opt.Machine.identifyDisk(); err != nil {
		return nil, err
	}
	start := time.Now()
	p := newPrimary(opt)
	defer p.out.close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	p.stop = cancel
	if opt.Arbiter != nil {
		gen, err := claimFirst(ctx, opt.Arbiter, opt.Holder, opt.claimReadBack, p.log)
		if err != nil {
			return nil, fmt.Errorf("starting the run at the arbiter: %w", err)
		}
		p.proto.Arbitrate(gen)
		p.log.Info("holding the run's generation", zap.Uint64("generation", gen), zap.Stringer("arbiter", opt.Arbiter))
		id, err := arbiterIdentity(ctx, opt.Arbiter)
		if err != nil {
			return nil, err
		}
		p.opt.Machine.ArbiterID = id
	}
	if opt.Listener != nil {
		p.awaiting = opt.BackupWait > 0
		go p.acceptAll(ctx)
	}
	if err := p.connect(ctx); err != nil {
		return nil, err
	}
	if p.link != nil {
		p.watch(ctx, p.link)
	}
	stopWake := context.AfterFunc(ctx, func() { p.mu.Lock(); p.cond.Broadcast(); p.mu.Unlock() })
	defer stopWake()

	res, final, runErr := p.run(ctx)
	switch {
	case runErr == nil:
		runErr = p.drain(ctx, res.ExitCode, final, "")
		p.endJournal(runErr)
	case vm.StoppedByGuest(res, runErr):
		// The backup meets the same stop: it must replay to it, not take
		// over and run on (as it would if the link just closed).
		if err := p.drain(ctx, res.ExitCode, final, runErr.Error()); err != nil {
			p.log.Warn("ending the stopped run with the backup", zap.Error(err))
		}
	}
	p.out.close() // what was released is written before the report counts it
	runErr = p.stopErr(runErr)
	p.mu.Lock()
	p.proto.End()
	p.mu.Unlock()
	if p.link != nil {
		p.link.Close()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.report.DurationMS = time.Since(start).Milliseconds()
	if p.link != nil {
		p.report.LogBytes = p.link.BytesSent()
	}
	if runErr == nil {
		// The guest's own end, kept even when a divergence fails the run.
		code := int(res.ExitCode)
		p.report.ExitCode = &code
	}
	if runErr = p.divergedErr(res, runErr); runErr != nil {
		p.report.Error = runErr.Error()
	}
	rep := p.report
	return &rep, runErr
}

// divergedErr fails a run whose backup reported a divergence, whatever
// else ended it: a divergence at any point means the replicas were not
// copies (the guest is nondeterministic, or the machine is), which an
// exit status of the guest's own would hide. p.mu is held.
func (p *primary) divergedErr(res vm.Result, runErr error) error {
	if p.report.Divergence == "" {
		return runErr
	}
	div := fmt.Errorf("%w: %s", ErrBackupDiverged, p.report.Divergence)
	if runErr != nil {
		return fmt.Errorf("%w; and %w", runErr, div)
	}
	return fmt.Errorf("the guest powered off with exit code %d, but %w", res.ExitCode, div)
}

func newPrimary(opt PrimaryOptions) *primary {
	p := &primary{opt: opt, log: opt.Log, proto: epoch.NewPrimary(opt.Mode, opt.MaxLag), joins: make(chan *Link, 1), first: make(chan *Link, 1), firstSlot: make(chan struct{}, 1),
		handshake: handshakeTimeout}
	p.out = newOutbox(p.perform)
	p.cond = sync.NewCond(&p.mu)
	p.report.Role, p.report.Engine = "primary", uc.Version()
	return p
}

// beforeEpoch is the primary's epoch gate, on the machine thread: it
// serves a joining backup, then waits while the backup lags too far
// behind (rule 2).
func (p *primary) beforeEpoch(ctx context.Context, e uint64, at *vm.Boundary) error {
	p.pollJoin(ctx, e, at)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.epoch = e
	for !p.proto.MayStart(e) {
		if err := ctx.Err(); err != nil {
			return err
		}
		p.cond.Wait()
	}
	return nil
}

func (p *primary) connect(ctx context.Context) error {
	if p.opt.Listener == nil || p.opt.BackupWait <= 0 {
		p.proto.BackupLost()
		p.log.Info("running without a backup")
		return nil
	}
	p.log.Info("waiting for a backup", zap.String("listen", p.opt.Listener.Addr().String()),
		zap.Duration("up_to", p.opt.BackupWait))
	t := time.NewTimer(p.opt.BackupWait)
	defer t.Stop()
	var link *Link
	select {
	case link = <-p.first:
	case <-t.C:
	case <-ctx.Done():
	}
	p.mu.Lock()
	p.awaiting = false
	p.mu.Unlock()
	if link == nil {
		select {
		case late := <-p.first: // admitted as the wait ended
			late.Close()
		default:
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		return fmt.Errorf("no backup connected to %s within %v (start `hvft backup --primary ADDR` with the same guest, or use --backup-wait 0 to run alone)", p.opt.Listener.Addr(), p.opt.BackupWait)
	}
	p.link = link
	p.log.Info("backup connected", zap.String("backup", link.RemoteAddr()), zap.Stringer("protocol", p.opt.Mode), zap.Uint64("max_lag", p.opt.MaxLag))
	return nil
}

// apply carries out a protocol step; mu is held. Messages that announce
// nothing (answers, epoch ends, a goodbye) are queued on the link at once
// (a queue: Link.Send does no I/O). Released outputs go to the outbox,
// which writes them outside mu and off the machine thread, with the
// messages that announce them (release watermarks) after them.
func (p *primary) apply(act epoch.Actions) {
	if len(act.Release) > 0 {
		p.out.put(act)
		return
	}
	if len(act.Send) > 0 && p.link != nil && !p.proto.Alone() {
		p.link.Send(act.Send...) // a failed send surfaces as a lost link
	}
}

// perform writes a batch of released outputs (the outbox's goroutine),
// in release order. Console outputs reach the sink, flushed, before any
// message goes out: a release watermark must never tell the backup that
// an output left while it still sits in this process's buffer, or a crash
// would lose it. A primary stopped (fenced, or its sink failed) writes
// nothing more: what was released but not written stays with the backup,
// whose watermark never covered it.
func (p *primary) perform(outs []epoch.Output, sends []epoch.Message) {
	p.mu.Lock()
	stopped := p.stopErrLocked() != nil
	p.mu.Unlock()
	if stopped {
		return
	}
	console, disk := outs, []epoch.Output(nil)
	if hasDiskWrite(outs) {
		console = nil
		for _, o := range outs {
			if o.Kind == epoch.DiskWrite {
				disk = append(disk, o)
			} else {
				console = append(console, o)
			}
		}
	}
	var err error
	if len(console) > 0 {
		err = p.opt.Sink.Emit(console)
	}
	if err == nil {
		// Caught up: what the sink buffers leaves with the batch, so
		// output never waits for a later release to appear.
		if ferr := p.opt.Sink.Flush(); ferr != nil {
			err = fmt.Errorf("flushing the console: %w", ferr)
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		// The release watermark must not claim outputs the sink did not
		// take: the backup keeps them, to emit once it takes over, and
		// this primary stops so that it does.
		p.sinkErr = fmt.Errorf("the console sink failed: %w", err)
		p.proto.Stop(p.sinkErr)
		if p.proto.Alone() {
			p.log.Error("console sink failed: stopping (with no backup, what did not leave is lost)", zap.Error(err))
		} else {
			p.log.Error("console sink failed: stopping, so that the backup takes over and emits what did not leave", zap.Error(err))
		}
		if p.stop != nil {
			p.stop()
		}
		p.cond.Broadcast()
		return
	}
	p.report.OutputsEmitted += uint64(len(console))
	for _, o := range disk {
		p.live.DiskWrite(o.Ref.(vm.Output)) // rule 3: only now may it reach the disk
		p.report.DiskWrites++
	}
	if len(sends) > 0 && p.link != nil && !p.proto.Alone() {
		p.link.Send(sends...)
	}
}

// RecordAnswer implements vm.Recorder (rule 1). The log file (--record)
// is written after mu is released: only the machine thread records, so
// the order holds without the lock.
func (p *primary) RecordAnswer(a vm.Answer) error {
	p.mu.Lock()
	p.apply(p.proto.Answer(a))
	p.mu.Unlock()
	if p.opt.Record != nil {
		return p.opt.Record.RecordAnswer(a)
	}
	return nil
}

// RecordEpochEnd implements vm.Recorder (rule 2: logged before its
// interrupts are delivered).
func (p *primary) RecordEpochEnd(e vm.EpochEnd) error {
	p.mu.Lock()
	p.apply(p.proto.EndEpoch(e))
	p.mu.Unlock()
	if p.opt.Record != nil {
		return p.opt.Record.RecordEpochEnd(e)
	}
	return nil
}

// output takes a console byte from the live environment (rule 3).
func (p *primary) output(o vm.Output) error {
	p.mu.Lock()
	p.apply(p.proto.Output(wireOutput(o)))
	p.mu.Unlock()
	p.out.room() // the guest waits only for a sink that fell far behind
	return nil
}

// beforeCommit returns the wait before a Linux program's request that
// changes the outside world: until the backup holds every record before
// it (rule 3b), the backup is lost, the primary is fenced or ctx ends.
func (p *primary) beforeCommit(ctx context.Context) func(at vm.Point, answers uint64) error {
	return func(at vm.Point, answers uint64) error {
		p.mu.Lock()
		defer p.mu.Unlock()
		for !p.proto.MayCommit(at.Epoch, answers) {
			if p.fenced != nil {
				return p.fenced
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			p.cond.Wait()
		}
		if p.fenced != nil {
			return p.fenced
		}
		return nil
	}
}

// endJournal removes a Linux program's journal once the run is over and
// no replica can take it over any more.
func (p *primary) endJournal(runErr error) {
	if p.host == nil || runErr != nil {
		return
	}
	if err := p.host.RemoveJournal(); err != nil {
		p.log.Warn("removing the journal", zap.Error(err))
	}
}

// fence stops a primary that lost its lease; mu is held.
func (p *primary) fence(err error) {
	if p.fenced != nil {
		return
	}
	p.fenced = err
	p.proto.Stop(err)
	p.log.Error("FENCED: this replica may not act as the primary any more; releasing nothing more and stopping", zap.Error(err))
	if p.stop != nil {
		p.stop()
	}
	p.cond.Broadcast()
}

// watch starts the receiver and the heartbeat of a backup's link.
func (p *primary) watch(ctx context.Context, l *Link) {
	go p.receive(l)
	go heartbeat(ctx, l, p.opt.Heartbeat, p.opt.FailureTimeout, func(reason string) bool {
		p.loseBackup(l, "backup silent: "+reason)
		return true
	})
}

func (p *primary) receive(l *Link) {
	for {
		m, err := l.Recv()
		if err != nil {
			if errors.Is(err, epoch.ErrFrame) {
				p.log.Error("corrupt frame from the backup", zap.Error(err))
			}
			p.loseBackup(l, fmt.Sprintf("link closed: %v", err))
			return
		}
		switch m.Type {
		case epoch.TypeAck:
			p.mu.Lock()
			if p.link != l {
				p.mu.Unlock()
				return
			}
			act, err := p.proto.Ack(*m.Ack)
			p.apply(act)
			p.cond.Broadcast()
			p.mu.Unlock()
			if err != nil {
				p.log.Error("protocol violation by the backup", zap.Error(err))
				p.loseBackup(l, err.Error())
				return
			}
		case epoch.TypeDivergence:
			d := m.Divergence
			p.log.Error("BACKUP DIVERGED: the replicas are no longer copies; continuing alone",
				zap.Uint64("epoch", d.Epoch), zap.Uint64("clock", d.Clock), zap.String("rip", fmt.Sprintf("%#x", d.RIP)), zap.String("detail", d.Detail))
			p.mu.Lock()
			p.report.Divergence = fmt.Sprintf("epoch %d clock %d RIP %#x: %s", d.Epoch, d.Clock, d.RIP, d.Detail)
			p.mu.Unlock()
			p.loseBackup(l, "backup diverged")
			return
		case epoch.TypeGoodbye:
			p.mu.Lock()
			p.proto.BackupFinished(*m.Goodbye)
			p.cond.Broadcast()
			p.mu.Unlock()
			return
		case epoch.TypeHeartbeat:
		default:
			p.loseBackup(l, fmt.Sprintf("unexpected %v message from the backup", m.Type))
			return
		}
	}
}

// stopErr is why the run ended: a fence or a failed sink, which stop a
// primary whatever its run returned, else err.
func (p *primary) stopErr(err error) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if stop := p.stopErrLocked(); stop != nil {
		return stop
	}
	return err
}

// stopErrLocked is the fence or sink error that stops the primary, or
// nil; mu is held.
func (p *primary) stopErrLocked() error {
	if p.sinkErr != nil {
		return p.sinkErr
	}
	return p.fenced
}

// guardDisk raises the disk's fence to this primary's generation and
// fences the primary if a write of it is ever refused (a newer generation
// owns the disk). Without an arbiter there are no generations to fence by.
func (p *primary) guardDisk(ctx context.Context, disk *vm.HostDisk, gen uint64) error {
	if p.opt.Arbiter == nil {
		return nil
	}
	disk.OnNotice(func(s string) { p.log.Warn(s) })
	if err := disk.Claim(ctx, fenceToken(p.opt.Arbiter, gen)); err != nil {
		return fmt.Errorf("raising the disk's fence: %w", err)
	}
	p.mu.Lock()
	p.disk = disk
	p.mu.Unlock()
	disk.OnStale(func(err error) {
		p.mu.Lock()
		defer p.mu.Unlock()
		p.fence(err)
	})
	return nil
}

// loseBackup presumes the backup lost and carries out what the protocol
// decides (rule 6): go on alone, at once or, with an arbiter, once the
// next generation is won (rule 7); until then nothing is released, since
// the backup may be taking over. Lost, the primary is fenced.
func (p *primary) loseBackup(l *Link, reason string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.link != l {
		return // a link already replaced
	}
	act := p.proto.Suspect(reason)
	if gen := act.Claim; gen != 0 {
		p.link.Close()
		disk := p.disk
		p.mu.Unlock()
		err := claim(context.Background(), p.opt.Arbiter, gen, p.opt.Holder, p.opt.claimReadBack, p.log)
		if err == nil && disk != nil {
			// The disk's fence moves on to the new generation before the
			// protocol lets anything more reach the disk.
			if derr := disk.Claim(context.Background(), fenceToken(p.opt.Arbiter, gen)); derr != nil {
				err = fmt.Errorf("going on alone: %w", derr)
			}
		}
		p.mu.Lock()
		act = p.proto.Claimed(gen, err)
		if act.Alone != "" {
			p.log.Warn("won the next generation: going on alone", zap.Uint64("generation", gen))
		}
	}
	if act.Stop != nil {
		p.fence(act.Stop)
		return
	}
	if act.Alone == "" {
		return // nothing lost: the run is over, or a claim is under way
	}
	p.apply(act)
	p.report.BackupLost = reason
	p.cond.Broadcast()
	p.link.Close()
	p.log.Warn("backup lost; continuing alone", zap.String("reason", reason), zap.Uint64("epoch", p.epoch))
}

func (p *primary) run(ctx context.Context) (vm.Result, vm.Digest, error) {
	mc := p.opt.Machine
	disk, err := mc.openDisk()
	if err != nil {
		return vm.Result{}, vm.Digest{}, err
	}
	if disk != nil {
		defer disk.Close()
		if err := p.guardDisk(ctx, disk, p.proto.Generation()); err != nil {
			return vm.Result{}, vm.Digest{}, err
		}
	}
	input := p.opt.Input
	host, err := mc.linuxHost(input, nil)
	if err != nil {
		return vm.Result{}, vm.Digest{}, err
	}
	if host != nil {
		defer host.Close()
		input = nil // standard input is the program's, read by its requests
		if err := host.EnableJournal(); err != nil {
			return vm.Result{}, vm.Digest{}, err
		}
		p.host = host
	}
	live, err := vm.NewLive(vm.LiveConfig{Recorder: p, OnOutput: p.output, Input: input, CPU: p.opt.CPU, TimerJitter: p.opt.TimerJitter, Disk: disk,
		Host: host, BeforeCommit: p.beforeCommit(ctx)})
	if err != nil {
		return vm.Result{}, vm.Digest{}, err
	}
	defer live.Close()
	p.mu.Lock()
	p.live = live
	p.mu.Unlock()
	if p.opt.OnStart != nil {
		p.opt.OnStart()
	}
	m, err := vm.New(mc.Config, mc.Image, live, p.log)
	if err != nil {
		return vm.Result{}, vm.Digest{}, err
	}
	defer m.Close()
	defer p.abortTransfer() // before the machine's RAM goes away
	res, err := m.Run(ctx, vm.RunOptions{
		EpochLength: mc.EpochBlocks,
		MaxEpochs:   p.opt.MaxEpochs,
		BeforeEpoch: p.beforeEpoch,
		OnEpoch: func(s vm.Stop) error {
			if p.opt.OnEpoch != nil {
				p.opt.OnEpoch(s)
			}
			p.out.kick() // the epoch's outputs leave now, in one batch
			return p.opt.Sink.Progress(s.Epoch)
		},
	})
	st := m.Stats()
	final, herr := m.Hash()
	if herr != nil && err == nil {
		// A run with no final hash cannot be compared with its replica's.
		err = fmt.Errorf("the final state hash: %w", herr)
	}
	p.mu.Lock()
	p.report.Epochs, p.report.QuietEpochs, p.report.TLBMisses, p.report.FinalHash = st.Epochs, st.QuietEpochs, st.TLBMisses, final.String()
	p.mu.Unlock()
	return res, final, err
}

// drain waits until every output is released (acknowledged, or the backup
// lost), tells the backup the run is over, and waits for its verdict: its
// own goodbye with its final hash, a divergence, or its loss. Each wait is
// bounded by the failure detector.
func (p *primary) drain(ctx context.Context, exitCode uint32, final vm.Digest, stopped string) error {
	if p.link == nil {
		p.out.idle()
		if err := p.stopErr(nil); err != nil {
			return err
		}
		return p.opt.Sink.Flush()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for !p.proto.MayFinish() && p.proto.Stopped() == nil {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("waiting for the backup to acknowledge the last outputs: %w", err)
		}
		p.cond.Wait()
	}
	// Everything is released: the goodbye follows its writing.
	p.mu.Unlock()
	p.out.idle()
	p.mu.Lock()
	if err := p.stopErrLocked(); err != nil {
		// No goodbye: the backup must take over and emit what did not leave.
		return err
	}
	if err := p.opt.Sink.Flush(); err != nil {
		// The same, for a failure of the last flush.
		p.sinkErr = fmt.Errorf("the console sink failed: %w", err)
		p.proto.Stop(p.sinkErr)
		return p.sinkErr
	}
	act := p.proto.Finish(epoch.Goodbye{ExitCode: exitCode, Hash: final, Stopped: stopped})
	if len(act.Send) == 0 {
		return nil // alone: nobody to tell
	}
	p.apply(act)
	for {
		theirs, divergence := p.proto.Verdict()
		if theirs != nil {
			p.report.BackupFinalHash = vm.Digest(theirs.Hash).String()
			if divergence != "" {
				p.report.Divergence = divergence
				p.log.Error("BACKUP DIVERGED at the end of the run", zap.String("detail", divergence))
			}
			return nil
		}
		if p.proto.Alone() {
			return nil // lost before its verdict: the backup lost is in the report
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("waiting for the backup to finish its replay: %w", err)
		}
		p.cond.Wait()
	}
}
