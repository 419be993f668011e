package vm

import (
	"context"
	"fmt"

	"hvft/record"
	"hvft/vm/linux"
)

// The records of a run are package record's; these names keep the
// machine's code readable.
type (
	Digest     = record.Digest
	AnswerKind = record.AnswerKind
	Answer     = record.Answer
	Event      = record.Event
	StopReason = record.StopReason
	EpochEnd   = record.EpochEnd
)

// ParseDigest reads a digest's hex form.
func ParseDigest(s string) (Digest, error) { return record.ParseDigest(s) }

// Environment instructions.
const (
	KindIn    = record.KindIn
	KindCPUID = record.KindCPUID
	KindHost  = record.KindHost
)

// Reasons an epoch ends.
const (
	StopLimit    = record.StopLimit
	StopHalt     = record.StopHalt
	StopPowerOff = record.StopPowerOff
	StopFault    = record.StopFault
	StopEnv      = record.StopEnv
)

// Point locates an instruction in the run: the epoch, the block clock and
// the address of the block being executed (Unicorn reports the block's
// start inside port and CPUID hooks, not the instruction's).
type Point struct {
	Epoch uint64
	Clock uint64
	RIP   uint64
}

func (p Point) String() string {
	return fmt.Sprintf("epoch %d, clock %d, RIP %#x", p.Epoch, p.Clock, p.RIP)
}

// Output is an OUT that leaves the machine: its sequence number among the
// console's bytes (or zero for other devices), port and value.
type Output struct {
	Seq     uint64
	Port    uint32
	Value   uint32
	At      Point
	Answers uint64 // environment answers given before this output
	// Disk is set for a disk operation (Data holds a write's payload,
	// taken from RAM when the guest issued the command).
	Disk *DiskOp
	// Data is a disk write's payload, or with EffectStream the bytes a
	// Linux program wrote to standard output (Port 1) or error (Port 2);
	// Seq then numbers the chunk's last byte among all such bytes.
	Data []byte
}

// Wake describes, at a HLT, which IRQs could end the halt: a live
// environment waits for a host event on one of them.
type Wake struct {
	Halted bool
	Mask   uint32 // IRQs deliverable if raised now (zero: nothing can wake the guest)
	Room   int    // bytes of console input the board can still accept
}

// Environment is the one path through which the guest's environment
// instructions get their answers and its outputs leave, and through which
// host events reach the guest at epoch boundaries. The live implementation
// asks the host and records; the replay implementation answers from a log.
type Environment interface {
	// In answers an IN at port; local is the board's own answer, which a
	// live environment returns for every deterministic port.
	In(at Point, seq uint64, port uint32, size int, local uint64) (uint64, error)
	// CPUID answers CPUID for leaf and subleaf.
	CPUID(at Point, seq uint64, leaf, sub uint32) ([4]uint32, error)
	// Host answers a Linux program's request of the outside world (a
	// file's bytes, the clock, randomness): the live environment performs
	// it, the replay returns the logged answer.
	Host(at Point, seq uint64, c linux.Call) (linux.Result, error)
	// Out performs an output (live) or discards it (replay).
	Out(o Output, effect Effect, b *Board) error
	// EndEpoch records (live) or checks (replay) the end of an epoch, and
	// returns the events to deliver at this boundary. A live environment
	// given a halt waits, bounded by ctx, for a host event that can wake
	// the guest.
	EndEpoch(ctx context.Context, end *EpochEnd, wake Wake) ([]Event, error)
}

// BoardObserver is implemented by an environment that needs to see the
// board's state (a backup going live restarts the guest's timer from it).
// The machine calls Attach once, before the guest runs; the board may be
// read only from inside the environment's methods.
type BoardObserver interface {
	Attach(b *Board)
}

// LinuxObserver is implemented by an environment that needs a Linux
// program's run identity and input position (a backup taking over: the
// journal is named after the run, and the input the old primary read is
// skipped). The machine calls AttachLinux once; the function it passes
// may be called only from inside the environment's methods.
type LinuxObserver interface {
	AttachLinux(info func() LinuxInfo)
}

// LinuxInfo is what a LinuxObserver learns.
type LinuxInfo struct {
	Random    []byte // AT_RANDOM
	StdinRead uint64 // bytes of standard input read so far
}

// Recorder receives the records a run produces, in order.
type Recorder interface {
	RecordAnswer(a Answer) error
	RecordEpochEnd(e EpochEnd) error
}

// Record is one entry of an environment log: exactly one of the fields is
// set.
type Record struct {
	Answer *Answer
	End    *EpochEnd
}

// Log is an in-memory Recorder and replay source.
type Log struct {
	Records []Record
}

// RecordAnswer appends an answer.
func (l *Log) RecordAnswer(a Answer) error {
	l.Records = append(l.Records, Record{Answer: &a})
	return nil
}

// RecordEpochEnd appends an epoch end.
func (l *Log) RecordEpochEnd(e EpochEnd) error {
	e.Events = cloneEvents(e.Events)
	l.Records = append(l.Records, Record{End: &e})
	return nil
}

// Ends returns the log's epoch ends in order.
func (l *Log) Ends() []EpochEnd {
	var out []EpochEnd
	for _, r := range l.Records {
		if r.End != nil {
			out = append(out, *r.End)
		}
	}
	return out
}

func cloneEvents(evs []Event) []Event {
	if evs == nil {
		return nil
	}
	out := make([]Event, len(evs))
	for i, e := range evs {
		out[i] = Event{IRQ: e.IRQ, Arg: e.Arg, Data: append([]byte(nil), e.Data...)}
	}
	return out
}

// DivergenceError reports that the guest did something other than what the
// log recorded: a replica that is no longer a copy.
type DivergenceError struct {
	At     Point
	Seq    uint64
	Detail string
}

func (e *DivergenceError) Error() string {
	return fmt.Sprintf("divergence at %v (answer %d): %s", e.At, e.Seq, e.Detail)
}
