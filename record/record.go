// Package record owns the records a run consists of, the ones a backup
// replays: an environment's answer (Answer) and an epoch's end with the
// events delivered at it (EpochEnd). The machine (package vm) produces and
// consumes them, the protocol (package epoch) carries them over the link
// and into log files: one type for both, so no converter sits between
// the machine and the wire.
package record

import (
	"encoding/hex"
	"fmt"
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
