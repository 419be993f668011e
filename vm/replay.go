package vm

import (
	"context"
	"errors"
	"fmt"
	"io"

	"hvft/vm/linux"
)

// ErrLogExhausted means a replay needed a record the log does not hold.
var ErrLogExhausted = errors.New("the log holds no further record")

// RecordSource yields a log's records in order; Next returns io.EOF (or an
// error wrapping it) after the last one.
type RecordSource interface {
	Next(ctx context.Context) (Record, error)
}

// LogSource reads an in-memory Log.
type LogSource struct {
	log *Log
	pos int
}

// NewLogSource returns a source positioned at the log's first record.
func NewLogSource(l *Log) *LogSource { return &LogSource{log: l} }

// Next returns the next record.
func (s *LogSource) Next(context.Context) (Record, error) {
	if s.pos >= len(s.log.Records) {
		return Record{}, io.EOF
	}
	r := s.log.Records[s.pos]
	s.pos++
	return r, nil
}

// Replay is the environment of a backup or a replay: every answer comes from
// the log, outputs are discarded (the board still counts them), and any
// disagreement between the guest and the log is a DivergenceError.
type Replay struct {
	src RecordSource
	ctx context.Context
}

// NewReplay returns a replay environment reading src. ctx bounds waiting
// for records inside instruction hooks, which have no context of their own.
func NewReplay(ctx context.Context, src RecordSource) *Replay {
	return &Replay{src: src, ctx: ctx}
}

func (r *Replay) next(at Point, seq uint64, want string) (Record, error) {
	rec, err := r.src.Next(r.ctx)
	if errors.Is(err, io.EOF) {
		return Record{}, fmt.Errorf("replay at %v needs %s: %w", at, want, ErrLogExhausted)
	}
	if err != nil {
		return Record{}, fmt.Errorf("replay at %v: reading the log: %w", at, err)
	}
	return rec, nil
}

func (r *Replay) answer(at Point, seq uint64, kind AnswerKind, port uint32, what string) (*Answer, error) {
	rec, err := r.next(at, seq, what)
	if err != nil {
		return nil, err
	}
	if rec.Answer == nil {
		return nil, &DivergenceError{At: at, Seq: seq, Detail: fmt.Sprintf("guest executed %s, but the log's next record is the end of epoch %d", what, rec.End.Epoch)}
	}
	a := rec.Answer
	if a.Seq != seq || a.Kind != kind || a.Port != port {
		return nil, &DivergenceError{At: at, Seq: seq, Detail: fmt.Sprintf("guest executed %s, but the log holds answer %d: %v port/leaf %#x", what, a.Seq, a.Kind, a.Port)}
	}
	return a, nil
}

// In answers from the log, and checks deterministic ports against the board.
func (r *Replay) In(at Point, seq uint64, port uint32, size int, local uint64) (uint64, error) {
	a, err := r.answer(at, seq, KindIn, port, fmt.Sprintf("IN from port %#x", port))
	if err != nil {
		return 0, err
	}
	if Deterministic(port) && a.Value != local {
		return 0, &DivergenceError{At: at, Seq: seq, Detail: fmt.Sprintf("IN from port %#x: the log answers %#x, this replica's board %#x", port, a.Value, local)}
	}
	return a.Value, nil
}

// CPUID answers from the log.
func (r *Replay) CPUID(at Point, seq uint64, leaf, sub uint32) ([4]uint32, error) {
	a, err := r.answer(at, seq, KindCPUID, leaf, fmt.Sprintf("CPUID leaf %#x", leaf))
	if err != nil {
		return [4]uint32{}, err
	}
	if a.Sub != sub {
		return [4]uint32{}, &DivergenceError{At: at, Seq: seq, Detail: fmt.Sprintf("CPUID leaf %#x subleaf %#x, but the log holds subleaf %#x", leaf, sub, a.Sub)}
	}
	return a.Regs, nil
}

// Host answers a Linux program's request from the log.
func (r *Replay) Host(at Point, seq uint64, c linux.Call) (linux.Result, error) {
	a, err := r.answer(at, seq, KindHost, uint32(c.Op), fmt.Sprintf("the host request %v", c.Op))
	if err != nil {
		return linux.Result{}, err
	}
	return linux.Result{Value: int64(a.Value), Data: append([]byte(nil), a.Data...)}, nil
}

// Out discards the output: only the primary's outputs leave.
func (r *Replay) Out(Output, Effect, *Board) error { return nil }

// EndEpoch checks the boundary against the log's and returns its events.
func (r *Replay) EndEpoch(ctx context.Context, end *EpochEnd, _ Wake) ([]Event, error) {
	at := Point{Epoch: end.Epoch, Clock: end.Clock, RIP: end.RIP}
	rec, err := r.next(at, end.Answers, fmt.Sprintf("the end of epoch %d", end.Epoch))
	if err != nil {
		return nil, err
	}
	if rec.End == nil {
		return nil, &DivergenceError{At: at, Seq: end.Answers, Detail: fmt.Sprintf("epoch ended (%v), but the log's next record is answer %d (%v port/leaf %#x)", end.Reason, rec.Answer.Seq, rec.Answer.Kind, rec.Answer.Port)}
	}
	if err := CompareEnds(rec.End, end); err != nil {
		return nil, err
	}
	return cloneEvents(rec.End.Events), nil
}

// CompareEnds checks a replica's epoch end against the recorded one.
func CompareEnds(want, got *EpochEnd) error {
	at := Point{Epoch: got.Epoch, Clock: got.Clock, RIP: got.RIP}
	switch {
	case want.Epoch != got.Epoch || want.Clock != got.Clock || want.RIP != got.RIP || want.Reason != got.Reason:
		return &DivergenceError{At: at, Seq: got.Answers, Detail: fmt.Sprintf("epoch ended (%v) at epoch %d clock %d RIP %#x, but the log's ended (%v) at epoch %d clock %d RIP %#x",
			got.Reason, got.Epoch, got.Clock, got.RIP, want.Reason, want.Epoch, want.Clock, want.RIP)}
	case want.Answers != got.Answers:
		return &DivergenceError{At: at, Seq: got.Answers, Detail: fmt.Sprintf("epoch used %d answers, the log's %d", got.Answers, want.Answers)}
	case want.RAMHashed == got.RAMHashed && !want.Hash.IsZero() && want.Hash != got.Hash:
		return &DivergenceError{At: at, Seq: got.Answers, Detail: fmt.Sprintf("state hash %v, the log's %v (RAM hashed: %v)", got.Hash, want.Hash, got.RAMHashed)}
	}
	return nil
}
