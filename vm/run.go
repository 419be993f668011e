package vm

import (
	"context"
	"errors"
	"fmt"
)

// ErrMaxEpochs means a run reached its epoch budget before the guest
// powered off.
var ErrMaxEpochs = errors.New("the guest did not power off within the epoch budget")

// RunOptions bound a run.
type RunOptions struct {
	EpochLength uint64 // blocks per epoch
	MaxEpochs   uint64 // 0: no bound
	// BeforeEpoch, if set, is called before each epoch (numbered from 1)
	// and may wait: a primary uses it to bound its lead over the backup, a
	// backup to wait for the epoch's end record. An error ends the run.
	BeforeEpoch func(ctx context.Context, epoch uint64, at *Boundary) error
	// OnEpoch, if set, sees every epoch end; an error from it ends the run.
	// Both callbacks run on the machine's thread and must not call the
	// Machine.
	OnEpoch func(Stop) error
}

// Result is how a run ended.
type Result struct {
	Last     Stop
	ExitCode uint32
}

// Run runs epochs until the guest powers off. A fault, a divergence, the
// epoch budget or ctx end it with an error; Result.Last says where. The
// whole loop runs in one visit to the machine's thread: handing a call to a
// locked OS thread costs tens of microseconds on this host, too much to pay
// per epoch.
func (m *Machine) Run(ctx context.Context, opt RunOptions) (Result, error) {
	var res Result
	var err error
	if callErr := m.call(func() error {
		res, err = m.run(ctx, opt)
		return nil
	}); callErr != nil {
		return res, callErr
	}
	return res, err
}

func (m *Machine) run(ctx context.Context, opt RunOptions) (Result, error) {
	var res Result
	for n := uint64(0); opt.MaxEpochs == 0 || n < opt.MaxEpochs; n++ {
		if err := ctx.Err(); err != nil {
			return res, fmt.Errorf("run stopped after %d epochs: %w", n, err)
		}
		if opt.BeforeEpoch != nil {
			if err := opt.BeforeEpoch(ctx, m.epoch+1, &Boundary{m: m}); err != nil {
				return res, err
			}
		}
		st, err := m.runEpoch(ctx, opt.EpochLength)
		if st.Epoch != 0 {
			res.Last = st
		}
		if err != nil {
			return res, err
		}
		if opt.OnEpoch != nil {
			if err := opt.OnEpoch(st); err != nil {
				return res, err
			}
		}
		switch st.Reason {
		case StopFault:
			return res, fmt.Errorf("guest fault in epoch %d: %w", st.Epoch, st.Err)
		case StopPowerOff:
			res.ExitCode = m.board.ExitCode
			return res, nil
		}
	}
	return res, fmt.Errorf("%w (%d epochs of %d blocks)", ErrMaxEpochs, opt.MaxEpochs, opt.EpochLength)
}

// StoppedByGuest reports whether a run's error is one that every replica
// of the run meets at the same point: a guest fault or the epoch budget
// (not a divergence, a timeout or a failed environment).
func StoppedByGuest(res Result, err error) bool {
	return err != nil && (errors.Is(err, ErrMaxEpochs) || res.Last.Reason == StopFault)
}

// Boundary gives a BeforeEpoch callback access to the machine at an epoch
// boundary, on the machine's thread. It is valid only during the call.
type Boundary struct{ m *Machine }

// RAM is guest memory. Its contents change while the guest runs: a reader
// on another goroutine (a pre-copy) sees pages in flux and must re-check
// them at a later boundary.
func (b *Boundary) RAM() []byte { return b.m.mem }

// Answers is the number of environment answers given so far.
func (b *Boundary) Answers() uint64 { return b.m.seq }

// State is the machine's state without RAM: the body of a snapshot.
func (b *Boundary) State() ([]byte, error) { return b.m.stateBody() }

// Hash is the state hash.
func (b *Boundary) Hash() (Digest, error) { return b.m.hash() }

// Quiet reports whether the next epoch runs without the block clock
// (EpochClock): its end is then fixed by the guest's own execution.
func (b *Boundary) Quiet() bool { return !b.m.halted && b.m.nextQuiet() }
