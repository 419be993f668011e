package vm

import (
	"context"
	"encoding/hex"
	"fmt"

	"hvft/vm/linux"
)

// Digest is a state hash.
type Digest [16]byte

func (d Digest) String() string { return hex.EncodeToString(d[:]) }

// ParseDigest reads a digest's hex form.
func ParseDigest(s string) (Digest, error) {
	var d Digest
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(d) {
		return d, fmt.Errorf("digest %q: want %d hex bytes", s, len(d))
	}
	copy(d[:], b)
	return d, nil
}

// IsZero reports whether d is unset.
func (d Digest) IsZero() bool { return d == Digest{} }

// AnswerKind says which environment instruction an answer belongs to.
type AnswerKind uint8

// Environment instructions.
const (
	KindIn    AnswerKind = 1
	KindCPUID AnswerKind = 2
	// KindHost answers a Linux program's request of the outside world:
	// Port holds the request (linux.Op), Value the result, Data its bytes.
	KindHost AnswerKind = 3
)

func (k AnswerKind) String() string {
	switch k {
	case KindIn:
		return "IN"
	case KindCPUID:
		return "CPUID"
	case KindHost:
		return "host"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

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

// Answer is the environment's answer to one IN or CPUID: the record a
// backup replays. For IN, Port and Size identify the access and Value is the
// answer (the clock port answers 64 bits: the guest sees the low half, the
// board latches the high half). For CPUID, Port holds the leaf, Sub the
// subleaf and Regs EAX..EDX.
type Answer struct {
	Seq   uint64
	Kind  AnswerKind
	Port  uint32
	Sub   uint32
	Size  uint8
	Value uint64
	Regs  [4]uint32
	Data  []byte // KindHost: the bytes of the answer
}

// Event is something the host raised during an epoch, delivered at its end:
// an IRQ line, with data for console input.
type Event struct {
	IRQ  uint8
	Arg  uint64 // disk completions: operation ID << 8 | status
	Data []byte
}

// StopReason says why an epoch ended.
type StopReason uint8

// Reasons an epoch ends.
const (
	StopLimit    StopReason = 1 // the block clock reached the epoch's limit
	StopHalt     StopReason = 2 // HLT
	StopPowerOff StopReason = 3 // the guest powered off
	StopFault    StopReason = 4 // a fatal fault; the machine cannot go on
	// StopEnv: a quiet epoch (EpochClock) ended at an environment
	// instruction.
	StopEnv StopReason = 5
)

func (r StopReason) String() string {
	switch r {
	case StopLimit:
		return "limit"
	case StopHalt:
		return "halt"
	case StopPowerOff:
		return "power-off"
	case StopFault:
		return "fault"
	case StopEnv:
		return "environment"
	}
	return fmt.Sprintf("reason(%d)", uint8(r))
}

// EpochEnd is the record of an epoch boundary: where the epoch stopped, the
// state hash there (before the boundary's events), and the events delivered
// at it. Answers counts the environment answers given so far.
type EpochEnd struct {
	Epoch     uint64
	Clock     uint64
	RIP       uint64
	Reason    StopReason
	Answers   uint64
	Hash      Digest
	RAMHashed bool
	Events    []Event
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
