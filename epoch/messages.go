// Package epoch is hvft's replication protocol as pure logic: the messages
// a primary and a backup exchange, their binary codec, and the two roles'
// state machines, which are stepped with events and hand back what to send,
// what to release and what the caller may do next. It opens no sockets,
// starts no goroutines and reads no clocks: time and the network arrive as
// events, and the scenarios in testdata/ step it with no socket or clock
// (TestScripts; docs/protocol.md, "Rules as stepped events").
package epoch

import "hvft/record"

// Version is the wire protocol's version; a frame of another version is
// refused.
const Version = 5

// Type names a message.
type Type uint8

// Message types.
const (
	TypeHello      Type = 1  // backup -> primary: who I am and what I run
	TypeWelcome    Type = 2  // primary -> backup: accepted, or refused with a reason
	TypeAnswer     Type = 3  // primary -> backup: one environment answer
	TypeEpochEnd   Type = 4  // primary -> backup: the end of an epoch
	TypeAck        Type = 5  // backup -> primary: records held so far
	TypeHeartbeat  Type = 6  // both ways
	TypeRelease    Type = 7  // primary -> backup: output-release watermark
	TypeDivergence Type = 8  // backup -> primary: the replicas differ
	TypeGoodbye    Type = 9  // both ways: the run ended on purpose
	TypeJoinRAM    Type = 10 // primary -> joining backup: a piece of guest RAM
	TypeJoinState  Type = 11 // primary -> joining backup: the machine at the join boundary
)

func (t Type) String() string {
	names := map[Type]string{TypeHello: "hello", TypeWelcome: "welcome", TypeAnswer: "answer",
		TypeEpochEnd: "epoch-end", TypeAck: "ack", TypeHeartbeat: "heartbeat", TypeRelease: "release",
		TypeDivergence: "divergence", TypeGoodbye: "goodbye", TypeJoinRAM: "join-ram", TypeJoinState: "join-state"}
	if n, ok := names[t]; ok {
		return n
	}
	return "unknown"
}

// Message is one protocol message: exactly one of the pointers is set, the
// one its Type names.
type Message struct {
	Type       Type
	Hello      *Hello
	Welcome    *Welcome
	Answer     *Answer
	EpochEnd   *EpochEnd
	Ack        *Ack
	Release    *Release
	Divergence *Divergence
	Goodbye    *Goodbye
	JoinRAM    *JoinRAM
	JoinState  *JoinState
}

// MachineConfig is what both replicas must share for one instruction stream
// to produce the same states.
type MachineConfig struct {
	ImageDigest  [32]byte
	ArgsDigest   [32]byte // the guest's argument vector
	RAMSize      uint64
	EpochBlocks  uint64
	BoardVersion uint32
	// Engine is the emulator library's version: translation-block
	// boundaries, and so epoch boundaries, differ between versions.
	Engine      string
	DiskSectors uint64
	// DiskID is the shared disk's identity (vm.DiskIdentity): replicas
	// that name different image files must not pair.
	DiskID [16]byte
	// Console identifies a --console-out file on its host (host, device,
	// inode; empty without one): two replicas on one host that name
	// different files must not pair.
	Console string
	// Clock is the epoch clock ("always" or "adaptive"): where epochs end.
	Clock string
	// Arbiter identifies the run's arbiter (empty without one): its
	// register's name and the nonce stored with it when the run first
	// used it, so that a leftover register of another run, or another
	// arbiter reached at the same address, does not match.
	Arbiter string
	// DiskFile, Root and Journal identify the disk image, a Linux
	// program's root directory and its journal directory on their host
	// (host, device, inode; empty where unused), as Console does: two
	// replicas on one host that name different files or directories
	// (a byte copy included) must not pair.
	DiskFile, Root, Journal string
	// JournalVersion is the on-disk format of a Linux program's journal,
	// which a backup reads when it takes over.
	JournalVersion uint32
}

// Hello opens a link: the backup's configuration, and whether it joins a
// primary that is already running (by state transfer).
type Hello struct {
	Config MachineConfig
	Join   bool
}

// JoinRAM carries guest RAM at Offset to a joining backup: first a
// pre-copy of all of it while the guest runs, then the pages that changed.
type JoinRAM struct {
	Offset uint64
	Data   []byte
}

// JoinState ends a state transfer: the machine's state (without RAM) at
// the end of Epoch, after Answers answers, and its state hash with RAM,
// which the joined backup must reproduce.
type JoinState struct {
	Epoch   uint64
	Answers uint64
	Hash    [16]byte
	Clock   uint64 // the guest clock's value now, in ns: a takeover continues from it
	State   []byte
}

// Welcome answers a Hello; Reason is empty when accepted. Arbiter, if
// set, names the arbiter the primary runs under when the backup was given
// none (the default on one host, "file:DIR").
type Welcome struct {
	Accepted bool
	Reason   string
	Arbiter  string
	// Proof is a token the primary wrote, just before answering, into a
	// file beside the shared disk image: a backup that reads another one
	// there names another image (a copy, or another host's file).
	Proof string
}

// The records the log carries are package record's, the machine's own:
// an environment answer (rule 1) and an epoch's end with the interrupts
// to deliver at its boundary (rule 2).
type (
	Answer   = record.Answer
	Event    = record.Event
	EpochEnd = record.EpochEnd
)

// KindHost is the answer kind that carries Data on the wire.
const KindHost = record.KindHost

// Ack says the backup holds every answer up to Answers and every epoch end
// up to Epoch, and has executed every epoch up to Executed.
type Ack struct {
	Epoch    uint64
	Answers  uint64
	Executed uint64
}

// Release says the primary has let every output up to Output leave.
type Release struct {
	Output uint64
}

// Divergence reports that the backup's state differs from the primary's.
type Divergence struct {
	Epoch  uint64
	Clock  uint64
	RIP    uint64
	Detail string
}

// Goodbye says the run is over. From the primary: the guest powered off
// with this exit code, or (Stopped set) the run stopped where any replica
// of it stops too (a guest fault, the epoch budget); finish the replay
// rather than take over. From the backup, in answer: the replay reached
// the same end, with this final state hash (RAM included).
type Goodbye struct {
	ExitCode uint32
	Hash     [16]byte
	Stopped  string // why the run ended without a power-off ("" at power-off)
}
