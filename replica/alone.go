package replica

import (
	"context"
	"time"

	"go.uber.org/zap"

	"hvft/vm"
)

// Alone is how an unreplicated run ended.
type Alone struct {
	Result  vm.Result
	Stats   vm.Stats
	Final   vm.Digest // state hash with RAM at the end
	Elapsed time.Duration
}

// RunAlone runs m unreplicated, as hvft run does: its disk image (if it
// has one) opened, a live environment configured by live (whose Disk is
// set here), epochs of m.EpochBlocks unless opt says otherwise. Stats and
// the final hash are filled in even when the run fails.
func RunAlone(ctx context.Context, m Machine, live vm.LiveConfig, opt vm.RunOptions, log *zap.Logger) (Alone, error) {
	var out Alone
	disk, err := m.openDisk()
	if err != nil {
		return out, err
	}
	if disk != nil {
		defer disk.Close()
	}
	live.Disk = disk
	if live.Host == nil {
		host, err := m.linuxHost(live.Input, live.Random)
		if err != nil {
			return out, err
		}
		if host != nil {
			defer host.Close()
			live.Host, live.Input = host, nil
		}
	}
	env, err := vm.NewLive(live)
	if err != nil {
		return out, err
	}
	defer env.Close()
	mach, err := vm.New(m.Config, m.Image, env, log)
	if err != nil {
		return out, err
	}
	defer mach.Close()
	if opt.EpochLength == 0 {
		opt.EpochLength = m.EpochBlocks
	}
	start := time.Now()
	out.Result, err = mach.Run(ctx, opt)
	out.Elapsed = time.Since(start)
	if cerr := env.Close(); cerr != nil && err == nil {
		err = cerr // the console's last bytes did not reach it
	}
	out.Stats = mach.Stats()
	if h, herr := mach.Hash(); herr == nil {
		out.Final = h
	}
	return out, err
}
