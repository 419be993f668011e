package replica

import (
	"context"
	"errors"
	"fmt"

	"hvft/vm"
	"hvft/vm/guestelf"
	"hvft/vm/linux"
	"hvft/vm/tlb"
	"hvft/vm/uc"
)

// ReplayOptions configure a replay of a recorded log.
type ReplayOptions struct {
	Log   *LoadedLog
	Image *guestelf.Image
	// Program is the Linux program a --linux log ran (Image then carries
	// only its digest).
	Program    *linux.Program
	TLB        tlb.Config
	UntilEpoch uint64 // stop after this epoch (0: the whole log)
	// Dump, if set, is called with the machine where the replay stopped.
	Dump func(m *vm.Machine) error
}

// ReplayResult is what a replay found.
type ReplayResult struct {
	Epochs    uint64 `json:"epochs"`
	FinalHash string `json:"final_hash"`
	// Matched counts the recorded state hashes compared with the replay's
	// and found equal: on a replay without error, every epoch's.
	Matched  uint64 `json:"hashes_matched"`
	PowerOff bool   `json:"powered_off"`
	ExitCode *int   `json:"exit_code,omitempty"`
	Torn     string `json:"torn,omitempty"`
	Damage   string `json:"damage,omitempty"`
}

// Replay re-executes a log with no host input, checking every epoch's
// state hash against the recorded one; a mismatch, in any epoch, the
// power-off epoch included, is a vm.DivergenceError naming the epoch.
// A replay returns no error only when every epoch it ran matched the log,
// and it ran every whole epoch the log holds (or stopped at UntilEpoch);
// a damaged log (LoadedLog.Damage) is a LogDamageError once the epochs
// before the damage have replayed.
func Replay(ctx context.Context, opt ReplayOptions) (*ReplayResult, error) {
	h := opt.Log.Header
	if got := fmt.Sprintf("%x", opt.Image.Digest); got != h.ImageDigest {
		return nil, fmt.Errorf("the guest image's digest is %s, but the log was recorded with %s", got, h.ImageDigest)
	}
	if h.BoardVersion != vm.BoardVersion {
		return nil, fmt.Errorf("the log was recorded on board version %d; this build has %d", h.BoardVersion, vm.BoardVersion)
	}
	if h.Engine != uc.Version() {
		return nil, fmt.Errorf("the log was recorded on libunicorn %s; this build runs %s, whose epoch boundaries differ", h.Engine, uc.Version())
	}
	clock, err := vm.ParseEpochClock(h.Clock)
	if err != nil {
		return nil, fmt.Errorf("the log's header: %w", err)
	}
	cfg := vm.Config{RAMSize: h.RAMSize, TLB: opt.TLB, Args: h.Args, DiskSectors: h.DiskSectors, Clock: clock}
	if l := h.Linux; l != nil {
		if opt.Program == nil {
			return nil, errors.New("the log records a Linux program: give it (ReplayOptions.Program)")
		}
		cfg.Linux = &vm.LinuxSetup{Program: opt.Program, Process: linux.Config{Args: h.Args, Env: l.Env, Exe: l.Exe, Cwd: l.Cwd, UID: l.UID, GID: l.GID}}
	}
	src := &trackedSource{RecordSource: vm.NewLogSource(&opt.Log.Log)}
	env := &replayEnv{Replay: vm.NewReplay(ctx, src), src: src}
	m, err := vm.New(cfg, opt.Image, env, nil)
	if err != nil {
		return nil, err
	}
	defer m.Close()
	res := &ReplayResult{Torn: opt.Log.Torn, Damage: opt.Log.Damage}
	limit := opt.Log.Epochs
	if opt.UntilEpoch > 0 && opt.UntilEpoch < limit {
		limit = opt.UntilEpoch
	}
	var runErr error
	if limit > 0 { // (a bound of 0 would be none)
		_, runErr = m.Run(ctx, vm.RunOptions{EpochLength: h.EpochBlocks, MaxEpochs: limit})
	}
	res.Matched = env.matched
	st := m.Stats()
	res.Epochs = st.Epochs
	if final, err := m.Hash(); err == nil {
		res.FinalHash = final.String()
	}
	off, code := m.PoweredOff()
	if off {
		res.PowerOff = true
		c := int(code)
		res.ExitCode = &c
	}
	switch {
	case runErr == nil && off && src.read < len(opt.Log.Log.Records):
		// The log goes on past the power-off: it records another run.
		runErr = &vm.DivergenceError{At: vm.Point{Epoch: st.Epochs}, Detail: fmt.Sprintf("the guest powered off in epoch %d, but the log holds %d more records",
			st.Epochs, len(opt.Log.Log.Records)-src.read)}
	case errors.Is(runErr, vm.ErrMaxEpochs):
		runErr = nil // stopped where asked, or where the log ends
	}
	if runErr == nil && res.Matched != res.Epochs {
		runErr = fmt.Errorf("replayed %d epochs but compared %d state hashes with the log's", res.Epochs, res.Matched)
	}
	if runErr == nil && opt.Dump != nil {
		runErr = opt.Dump(m)
	}
	if runErr == nil && opt.Log.Damage != "" {
		runErr = &LogDamageError{Damage: opt.Log.Damage, Replayed: res.Epochs}
	}
	return res, runErr
}

// LogDamageError is a replay's verdict on a damaged log: it replayed the
// whole epochs before the damage, and they matched, but the log claims
// more than it could check.
type LogDamageError struct {
	Damage   string // LoadedLog.Damage
	Replayed uint64
}

func (e *LogDamageError) Error() string {
	return fmt.Sprintf("%s; the %d whole epochs before it replayed and matched, the rest of the log could not be checked", e.Damage, e.Replayed)
}

// trackedSource remembers the last record it handed out, and counts them.
type trackedSource struct {
	vm.RecordSource
	last vm.Record
	read int
}

func (s *trackedSource) Next(ctx context.Context) (vm.Record, error) {
	r, err := s.RecordSource.Next(ctx)
	if err == nil {
		s.last = r
		s.read++
	}
	return r, err
}

// replayEnv is a replay's environment: vm's, with every epoch end's state
// hash also compared here with the recorded one, so that the count of
// matches is a count of comparisons.
type replayEnv struct {
	*vm.Replay
	src     *trackedSource
	matched uint64
}

// EndEpoch implements vm.Environment.
func (e *replayEnv) EndEpoch(ctx context.Context, end *vm.EpochEnd, wake vm.Wake) ([]vm.Event, error) {
	evs, err := e.Replay.EndEpoch(ctx, end, wake)
	if err != nil {
		return nil, err
	}
	if err := compareHash(e.src.last.End, end); err != nil {
		return nil, err
	}
	e.matched++
	return evs, nil
}

// compareHash compares a replica's state hash at an epoch end with the
// recorded one (the other side's, or the log's), whose end vm.CompareEnds
// has accepted. CompareEnds compares hashes only when the record carries
// one hashed over the same things (RAM or not) as the replica's; here an
// end that cannot be compared is a divergence too, so that a hash never
// compared never passes for one that matched.
func compareHash(want, got *vm.EpochEnd) error {
	at := vm.Point{Epoch: got.Epoch, Clock: got.Clock, RIP: got.RIP}
	ram := map[bool]string{true: "with RAM", false: "without RAM"}
	var detail string
	switch {
	case want == nil:
		detail = fmt.Sprintf("epoch %d ended, but no recorded end was read", got.Epoch)
	case want.Hash.IsZero():
		detail = fmt.Sprintf("the recorded end of epoch %d carries no state hash: nothing to compare this replica's %v with", got.Epoch, got.Hash)
	case want.RAMHashed != got.RAMHashed:
		detail = fmt.Sprintf("the recorded state hash %v is %s, this replica's %v %s: they cannot be compared",
			want.Hash, ram[want.RAMHashed], got.Hash, ram[got.RAMHashed])
	case want.Hash != got.Hash:
		detail = fmt.Sprintf("state hash %v, the log's %v (RAM hashed: %v)", got.Hash, want.Hash, got.RAMHashed)
	default:
		return nil
	}
	return &vm.DivergenceError{At: at, Seq: got.Answers, Detail: detail}
}
