package vm

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"sync"
	"time"

	"hvft/vm/linux"
)

// MinTimerPeriod bounds how fast the host timer may tick, so that a guest
// cannot turn the host into an interrupt storm.
const MinTimerPeriod = 50 * time.Microsecond

// inputBuffer bounds console input read from the host but not yet delivered;
// the reader stops reading while it is full, so nothing accepted is dropped.
const inputBuffer = 64 << 10

// LiveConfig configures a live environment.
type LiveConfig struct {
	Console  io.Writer // console output; nil discards it
	Input    io.Reader // console input; nil means none
	Recorder Recorder  // receives every answer and epoch end; may be nil
	Random   io.Reader // the random source; nil means crypto/rand
	CPU      *CPUModel // CPUID answers; nil means ProbeCPUModel
	// TimerJitter adds up to this much random delay to each timer tick, to
	// prove that replicas do not depend on when ticks arrive.
	TimerJitter time.Duration
	// OnOutput, if set, receives each console byte instead of Console.
	OnOutput func(o Output) error
	// ClockStart is the guest clock's value now, in nanoseconds: zero at
	// boot, the last value the guest saw when a backup takes over, so
	// that the guest's clock never runs backwards.
	ClockStart uint64
	// Disk is the shared disk image; nil when the board has none. With
	// OnOutput set, disk writes go to OnOutput (the output rule decides
	// when they happen) and the caller performs them with DiskWrite.
	Disk *HostDisk
	// Host performs a Linux program's requests (files, standard input,
	// clock, randomness); Stderr receives its standard error (nil: it
	// goes to Console).
	Host   *linux.Host
	Stderr io.Writer
	// BeforeCommit, if set, is called before a request that changes the
	// outside world (linux.Call.Commits) is performed, with the answers
	// given before it: a primary waits there until its backup holds them
	// (rule 3b).
	BeforeCommit func(at Point, answers uint64) error
}

// Live is the environment of a primary or an unreplicated run: host devices
// answer and every answer is recorded.
type Live struct {
	cfg     LiveConfig
	out     *bufio.Writer
	start   time.Time
	cpu     *CPUModel
	random  io.Reader
	notify  chan struct{}
	mu      sync.Mutex
	cond    *sync.Cond
	ticked  bool
	input   []byte
	inEOF   bool
	inErr   error
	timer   context.CancelFunc
	timerOn bool
	closed  bool
	// The disk operation in flight and its completion once done.
	diskBusy   bool
	diskDone   []Event
	uncertains uint64
}

// NewLive returns a live environment; its clock starts now.
func NewLive(cfg LiveConfig) (*Live, error) {
	l := &Live{cfg: cfg, start: time.Now(), random: cfg.Random, cpu: cfg.CPU, notify: make(chan struct{}, 1)}
	l.cond = sync.NewCond(&l.mu)
	if l.random == nil {
		l.random = rand.Reader
	}
	if l.cpu == nil {
		cpu, err := ProbeCPUModel()
		if err != nil {
			return nil, err
		}
		l.cpu = cpu
	}
	if cfg.Console != nil {
		l.out = bufio.NewWriter(cfg.Console)
	}
	if cfg.Input != nil {
		go l.readInput(cfg.Input)
	} else {
		l.inEOF = true
	}
	return l, nil
}

// Close stops the timer and flushes the console.
func (l *Live) Close() error {
	l.mu.Lock()
	l.closed = true
	if l.timer != nil {
		l.timer()
	}
	l.cond.Broadcast()
	l.mu.Unlock()
	return l.Flush()
}

// Flush writes out buffered console output.
func (l *Live) Flush() error {
	if l.out == nil {
		return nil
	}
	if err := l.out.Flush(); err != nil {
		return fmt.Errorf("writing the console: %w", err)
	}
	return nil
}

func (l *Live) signal() {
	select {
	case l.notify <- struct{}{}:
	default:
	}
}

// readInput moves host input into a bounded buffer. The goroutine may
// outlive the environment while blocked in Read (a terminal cannot be
// interrupted portably); it then exits at the next byte or EOF.
func (l *Live) readInput(r io.Reader) {
	buf := make([]byte, 4096)
	for {
		l.mu.Lock()
		for len(l.input) >= inputBuffer && !l.closed {
			l.cond.Wait()
		}
		closed := l.closed
		l.mu.Unlock()
		if closed {
			return
		}
		n, err := r.Read(buf)
		l.mu.Lock()
		l.input = append(l.input, buf[:n]...)
		if err != nil {
			l.inEOF = true
			if !errors.Is(err, io.EOF) {
				l.inErr = err
			}
		}
		l.mu.Unlock()
		l.signal()
		if err != nil {
			return
		}
	}
}

func (l *Live) record(a Answer) error {
	if l.cfg.Recorder == nil {
		return nil
	}
	if err := l.cfg.Recorder.RecordAnswer(a); err != nil {
		return fmt.Errorf("recording answer %d: %w", a.Seq, err)
	}
	return nil
}

// In answers from the host clock and random source, and from the board for
// every other port.
func (l *Live) In(at Point, seq uint64, port uint32, size int, local uint64) (uint64, error) {
	v := local
	switch port {
	case PortClockLo:
		v = l.Now()
	case PortRandom:
		var b [4]byte
		if _, err := io.ReadFull(l.random, b[:]); err != nil {
			return 0, fmt.Errorf("random source: %w", err)
		}
		v = uint64(binary.LittleEndian.Uint32(b[:]))
	}
	return v, l.record(Answer{Seq: seq, Kind: KindIn, Port: port, Size: uint8(size), Value: v})
}

// Now is the guest clock's value now, in nanoseconds.
func (l *Live) Now() uint64 { return l.cfg.ClockStart + uint64(time.Since(l.start).Nanoseconds()) }

// StartClock restarts the guest clock at from, now: an environment built
// ahead of a takeover continues the clock the guest saw when it goes
// live, not when it was built. Call it before the machine uses it.
func (l *Live) StartClock(from uint64) {
	l.cfg.ClockStart, l.start = from, time.Now()
}

// CPUID answers from the CPU model.
func (l *Live) CPUID(at Point, seq uint64, leaf, sub uint32) ([4]uint32, error) {
	r := l.cpu.Answer(leaf, sub)
	return r, l.record(Answer{Seq: seq, Kind: KindCPUID, Port: leaf, Sub: sub, Regs: r})
}

// Host performs a Linux program's request and records the answer.
func (l *Live) Host(at Point, seq uint64, c linux.Call) (linux.Result, error) {
	if l.cfg.Host == nil {
		return linux.Result{}, fmt.Errorf("at %v: a Linux program's %v request reached an environment without a host", at, c.Op)
	}
	if c.Op == linux.OpStdin {
		// A prompt written before a read must be seen before the read waits.
		if err := l.Flush(); err != nil {
			return linux.Result{}, err
		}
	}
	if c.Commits() && l.cfg.BeforeCommit != nil {
		if err := l.cfg.BeforeCommit(at, seq-1); err != nil {
			return linux.Result{}, err
		}
	}
	r, err := l.cfg.Host.DoAt(seq, c)
	if err != nil {
		return linux.Result{}, fmt.Errorf("at %v: the %v request: %w", at, c.Op, err)
	}
	return r, l.record(Answer{Seq: seq, Kind: KindHost, Port: uint32(c.Op), Value: uint64(r.Value), Data: r.Data})
}

// Out performs an output: a console byte is written, a timer reprogrammed.
func (l *Live) Out(o Output, effect Effect, b *Board) error {
	switch effect {
	case EffectStream:
		if l.cfg.OnOutput != nil {
			return l.cfg.OnOutput(o)
		}
		return l.writeStream(o)
	case EffectConsole:
		if l.cfg.OnOutput != nil {
			return l.cfg.OnOutput(o)
		}
		if l.out != nil {
			if err := l.out.WriteByte(byte(o.Value)); err != nil {
				return fmt.Errorf("writing the console: %w", err)
			}
		}
	case EffectTimer:
		l.programTimer(b.TimerPeriod)
	case EffectDiskRead:
		l.startDisk(*o.Disk, nil)
	case EffectDiskWrite:
		l.mu.Lock()
		l.diskBusy = true
		l.mu.Unlock()
		if l.cfg.OnOutput != nil {
			return l.cfg.OnOutput(o)
		}
		l.startDisk(*o.Disk, o.Data)
	}
	return nil
}

// writeStream writes a Linux program's standard output or error.
func (l *Live) writeStream(o Output) error {
	if o.Port == 2 && l.cfg.Stderr != nil {
		if err := l.Flush(); err != nil {
			return err
		}
		if _, err := l.cfg.Stderr.Write(o.Data); err != nil {
			return fmt.Errorf("writing standard error: %w", err)
		}
		return nil
	}
	if l.out == nil {
		return nil
	}
	if _, err := l.out.Write(o.Data); err != nil {
		return fmt.Errorf("writing standard output: %w", err)
	}
	return nil
}

// WriteStream performs a standard-output write the output rule released.
func (l *Live) WriteStream(o Output) error { return l.writeStream(o) }

// DiskWrite performs a disk write the output rule released.
func (l *Live) DiskWrite(o Output) { l.startDisk(*o.Disk, o.Data) }

// startDisk performs op on the host disk in the background; its
// completion arrives as an event at a later epoch boundary.
func (l *Live) startDisk(op DiskOp, data []byte) {
	l.mu.Lock()
	l.diskBusy = true
	l.mu.Unlock()
	go func() {
		ev := CompletionEvent(op, DiskError, nil)
		if l.cfg.Disk != nil {
			ev = l.cfg.Disk.perform(op, data)
		}
		l.mu.Lock()
		l.diskDone = append(l.diskDone, ev)
		l.mu.Unlock()
		l.signal()
	}()
}

// Uncertain counts the uncertain completions this environment delivered.
func (l *Live) Uncertain() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.uncertains
}

// Resume starts the host side of devices whose state the board already
// holds: a backup that takes over restarts the guest's programmed timer.
//
// A disk operation the board shows in flight may or may not have been
// performed by the old primary: it completes as UNCERTAIN, and the guest's
// driver reissues it (the paper's uncertain interrupts).
func (l *Live) Resume(b *Board) {
	if b.TimerPeriod != 0 {
		l.programTimer(b.TimerPeriod)
	}
	if b.DiskOp != nil {
		l.mu.Lock()
		l.diskBusy = true
		l.diskDone = append(l.diskDone, CompletionEvent(*b.DiskOp, DiskUncertain, nil))
		l.uncertains++
		l.mu.Unlock()
		l.signal()
	}
}

// programTimer restarts the host timer with a period in microseconds.
func (l *Live) programTimer(periodMicros uint32) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.timer != nil {
		l.timer()
		l.timer = nil
	}
	l.timerOn = periodMicros != 0
	if !l.timerOn {
		// A stopped timer has no tick to deliver, not even one that came
		// before the stop and was not yet taken.
		l.ticked = false
	}
	if !l.timerOn || l.closed {
		return
	}
	period := time.Duration(periodMicros) * time.Microsecond
	if period < MinTimerPeriod {
		period = MinTimerPeriod
	}
	ctx, cancel := context.WithCancel(context.Background())
	l.timer = cancel
	go l.tick(ctx, period)
}

func (l *Live) tick(ctx context.Context, period time.Duration) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if l.cfg.TimerJitter > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Duration(mrand.Int64N(int64(l.cfg.TimerJitter)))):
			}
		}
		l.mu.Lock()
		// programTimer cancels under l.mu: a tick that lost the race with a
		// reprogramming must not land after it.
		stale := ctx.Err() != nil
		if !stale {
			l.ticked = true
		}
		l.mu.Unlock()
		if stale {
			return
		}
		l.signal()
	}
}

// take moves pending host events into evs (at most room input bytes).
func (l *Live) take(evs []Event, room int) []Event {
	if l.ticked {
		l.ticked = false
		if !hasIRQ(evs, IRQTimer) {
			evs = append(evs, Event{IRQ: IRQTimer})
		}
	}
	if len(l.diskDone) > 0 {
		evs = append(evs, l.diskDone...)
		l.diskDone = nil
		l.diskBusy = false
	}
	held := 0
	for _, e := range evs {
		held += len(e.Data)
	}
	if n := min(len(l.input), room-held); n > 0 {
		data := append([]byte(nil), l.input[:n]...)
		l.input = l.input[n:]
		l.cond.Broadcast()
		merged := false
		for i := range evs {
			if evs[i].IRQ == IRQConsoleRX {
				evs[i].Data = append(evs[i].Data, data...)
				merged = true
			}
		}
		if !merged {
			evs = append(evs, Event{IRQ: IRQConsoleRX, Data: data})
		}
	}
	return evs
}

func hasIRQ(evs []Event, irq uint8) bool {
	for _, e := range evs {
		if e.IRQ == irq {
			return true
		}
	}
	return false
}

func wakes(evs []Event, mask uint32) bool {
	for _, e := range evs {
		if mask&(1<<e.IRQ) != 0 {
			return true
		}
	}
	return false
}

// EndEpoch collects the host events that arrived during the epoch, waiting
// at a halt for one that can wake the guest, and records the boundary.
func (l *Live) EndEpoch(ctx context.Context, end *EpochEnd, wake Wake) ([]Event, error) {
	if err := l.Flush(); err != nil {
		return nil, err
	}
	var evs []Event
	for {
		l.mu.Lock()
		evs = l.take(evs, wake.Room)
		if !wake.Halted || wakes(evs, wake.Mask) {
			l.mu.Unlock()
			break
		}
		canTick := l.timerOn && wake.Mask&(1<<IRQTimer) != 0 ||
			l.diskBusy && wake.Mask&(1<<IRQDisk) != 0
		canInput := (!l.inEOF || len(l.input) > 0) && wake.Mask&(1<<IRQConsoleRX) != 0 && wake.Room > 0
		inErr, timerOn, inputOpen := l.inErr, l.timerOn, !l.inEOF
		l.mu.Unlock()
		if !canTick && !canInput {
			why := "interrupts are disabled or every IRQ is masked or in service"
			if wake.Mask != 0 {
				why = fmt.Sprintf("it waits for IRQs %#x and no device can raise them (timer running: %v, console input open: %v)", wake.Mask, timerOn, inputOpen)
			}
			if inErr != nil {
				why += fmt.Sprintf("; console input failed: %v", inErr)
			}
			return nil, fmt.Errorf("guest halted at RIP %#x and can never wake: %s", end.RIP, why)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for a host event at a halt: %w", ctx.Err())
		case <-l.notify:
		}
	}
	end.Events = evs
	if l.cfg.Recorder != nil {
		if err := l.cfg.Recorder.RecordEpochEnd(*end); err != nil {
			return nil, fmt.Errorf("recording the end of epoch %d: %w", end.Epoch, err)
		}
	}
	return evs, nil
}
