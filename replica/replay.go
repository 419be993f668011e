package replica

import (
	"context"
	"errors"
	"fmt"

	"hvft/vm"
	"hvft/vm/guestelf"
	"hvft/vm/tlb"
	"hvft/vm/uc"
)

// ReplayOptions configure a replay of a recorded log.
type ReplayOptions struct {
	Log        *LoadedLog
	Image      *guestelf.Image
	TLB        tlb.Config
	UntilEpoch uint64 // stop after this epoch (0: the whole log)
	// Dump, if set, is called with the machine where the replay stopped.
	Dump func(m *vm.Machine) error
}

// ReplayResult is what a replay found.
type ReplayResult struct {
	Epochs    uint64 `json:"epochs"`
	FinalHash string `json:"final_hash"`
	Matched   uint64 `json:"hashes_matched"`
	PowerOff  bool   `json:"powered_off"`
	ExitCode  *int   `json:"exit_code,omitempty"`
	Torn      string `json:"torn,omitempty"`
}

// Replay re-executes a log with no host input, checking every epoch's
// state hash against the recorded one; a mismatch is a vm.DivergenceError
// naming the epoch.
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
	cfg := vm.Config{RAMSize: h.RAMSize, TLB: opt.TLB, Args: h.Args, DiskSectors: h.DiskSectors}
	m, err := vm.New(cfg, opt.Image, vm.NewReplay(ctx, vm.NewLogSource(&opt.Log.Log)), nil)
	if err != nil {
		return nil, err
	}
	defer m.Close()
	res := &ReplayResult{Torn: opt.Log.Torn}
	limit := opt.Log.Epochs
	if opt.UntilEpoch > 0 && opt.UntilEpoch < limit {
		limit = opt.UntilEpoch
	}
	_, runErr := m.Run(ctx, vm.RunOptions{EpochLength: h.EpochBlocks, MaxEpochs: limit, OnEpoch: func(s vm.Stop) error {
		if !s.Hash.IsZero() {
			res.Matched++ // EndEpoch compared it with the log's
		}
		return nil
	}})
	st := m.Stats()
	res.Epochs = st.Epochs
	if final, err := m.Hash(); err == nil {
		res.FinalHash = final.String()
	}
	if off, code := m.PoweredOff(); off {
		res.PowerOff = true
		c := int(code)
		res.ExitCode = &c
		runErr = nil
	} else if errors.Is(runErr, vm.ErrMaxEpochs) {
		runErr = nil // stopped where asked, or where the log ends
	}
	if runErr == nil && opt.Dump != nil {
		runErr = opt.Dump(m)
	}
	return res, runErr
}
