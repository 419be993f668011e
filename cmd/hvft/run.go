package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/urfave/cli/v2"
	"go.uber.org/zap"

	"hvft/guests"
	"hvft/replica"
	"hvft/vm"
	"hvft/vm/guestelf"
	"hvft/vm/uc"
)

// runReport is the JSON that --report writes.
type runReport struct {
	Guest       string `json:"guest"`
	ImageDigest string `json:"image_digest"`
	Engine      string `json:"engine"` // libunicorn version
	FinalHash   string `json:"final_hash"`
	Epochs      uint64 `json:"epochs"`
	QuietEpochs uint64 `json:"quiet_epochs"` // run without the block clock (--epoch-clock adaptive)
	Blocks      uint64 `json:"blocks"`
	Answers     uint64 `json:"answers"`
	TLBMisses   uint64 `json:"tlb_misses"`
	TLBEvicts   uint64 `json:"tlb_evictions"`
	TLBEntries  int    `json:"tlb_entries"`
	TLBSeed     uint64 `json:"tlb_seed"`
	Interrupts  uint64 `json:"interrupts"`
	ExitCode    *int   `json:"exit_code"`
	Stop        string `json:"stop"`
	StopRIP     string `json:"stop_rip"`
	Error       string `json:"error,omitempty"`
	DurationMS  int64  `json:"duration_ms"`
}

func runCommand() *cli.Command {
	return &cli.Command{
		Name:      "run",
		Usage:     "boot a guest unreplicated, console on stdout",
		ArgsUsage: "[GUEST] [-- GUEST-ARGS...]",
		Description: "GUEST is a built-in guest name (see `hvft guests`) or the path of a static x86-64 ELF;\n" +
			"the default is " + guests.Default + ". Arguments after -- reach the guest as argv[1..].\n" +
			"With --linux, GUEST is a static x86-64 Linux program (glibc or musl, static or static-PIE)\n" +
			"that runs under hvft's system-call personality, its files under --root, its standard\n" +
			"input, output and error the host's (docs/linux.md).\n" +
			"The exit status is the guest's power-off code (a Linux program's exit status).",
		Flags:  append(append(machineFlags(), runFlags()...), recordFlag()),
		Action: runAction,
	}
}

func runAction(c *cli.Context) error {
	log, err := newLogger(c)
	if err != nil {
		return err
	}
	defer log.Sync()
	cfg, err := machineConfig(c)
	if err != nil {
		return err
	}
	if err := checkReportPath(c); err != nil {
		return err
	}
	mach, label, err := loadMachine(c, cfg)
	if err != nil {
		return err
	}
	rep := runReport{Guest: label, ImageDigest: fmt.Sprintf("%x", mach.Image.Digest), Engine: uc.Version(), TLBEntries: mach.Config.TLB.Entries, TLBSeed: mach.Config.TLB.Seed}
	logBoot(log, label, mach)

	ctx := c.Context
	if d := c.Duration("timeout"); d > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	var rec vm.Recorder
	if path := c.String("record"); path != "" {
		w, err := replica.CreateLog(path, replica.HeaderFor(mach, "run"), false)
		if err != nil {
			return err
		}
		defer w.Close()
		rec = w
	}
	run, runErr := replica.RunAlone(ctx, mach, vm.LiveConfig{Console: c.App.Writer, Stderr: c.App.ErrWriter, Input: os.Stdin, Recorder: rec},
		vm.RunOptions{MaxEpochs: c.Uint64("max-epochs")}, log)
	res, st := run.Result, run.Stats
	rep.DurationMS = run.Elapsed.Milliseconds()
	rep.Epochs, rep.QuietEpochs, rep.Blocks, rep.Answers = st.Epochs, st.QuietEpochs, st.Blocks, st.Answers
	rep.TLBMisses, rep.TLBEvicts, rep.Interrupts = st.TLBMisses, st.Evictions, st.Interrupts
	rep.Stop, rep.StopRIP = res.Last.Reason.String(), fmt.Sprintf("%#x", res.Last.RIP)
	if !run.Final.IsZero() {
		rep.FinalHash = run.Final.String()
	}
	if runErr == nil {
		code := int(res.ExitCode)
		rep.ExitCode = &code
	} else {
		rep.Error = runErr.Error()
		if errors.Is(runErr, context.DeadlineExceeded) {
			runErr = fmt.Errorf("timed out after %v: %w", c.Duration("timeout"), runErr)
		}
	}
	log.Info("finished", zap.String("stop", rep.Stop), zap.String("final_hash", rep.FinalHash),
		zap.Uint64("epochs", rep.Epochs), zap.Uint64("blocks", rep.Blocks),
		zap.Uint64("tlb_misses", rep.TLBMisses), zap.Int64("duration_ms", rep.DurationMS))
	if path := c.String("report"); path != "" {
		if err := writeJSON(path, rep); err != nil {
			return err
		}
	}
	if runErr != nil {
		return runErr
	}
	return exitCode(res.ExitCode & 0xFF)
}

// writeJSON writes v to path atomically (temporary file, then rename).
func writeJSON(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("writing report: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("writing report: %w", err)
	}
	return nil
}

// loadMachine reads the guest named on the command line and completes the
// machine configuration with its arguments.
func loadMachine(c *cli.Context, cfg vm.Config) (replica.Machine, string, error) {
	name, args, err := guestArgs(c)
	if err != nil {
		return replica.Machine{}, "", err
	}
	if c.Bool("linux") {
		return loadLinux(c, cfg, name, args)
	}
	data, label, err := guests.Load(name)
	if err != nil {
		return replica.Machine{}, "", err
	}
	img, err := guestelf.Parse(data, cfg.RAMSize, vm.ImageMinAddr)
	if err != nil {
		return replica.Machine{}, "", fmt.Errorf("guest %s: %w", label, err)
	}
	cfg.Args = append([]string{name}, args...)
	m := replica.Machine{Image: img, Config: cfg, EpochBlocks: c.Uint64("epoch-blocks")}
	if m.DiskPath, m.Config.DiskSectors, m.DiskSync, err = diskConfig(c); err != nil {
		return replica.Machine{}, "", err
	}
	return m, label, nil
}

func logBoot(log *zap.Logger, label string, m replica.Machine) {
	cfg := m.Config
	log.Info("booting", zap.String("guest", label), zap.Strings("args", cfg.Args[1:]), zap.Uint64("ram", cfg.RAMSize),
		zap.Uint64("tlb_page", cfg.TLB.PageSize), zap.Int("tlb_entries", cfg.TLB.Entries),
		zap.Stringer("tlb_policy", cfg.TLB.Policy), zap.Uint64("tlb_seed", cfg.TLB.Seed),
		zap.Uint64("epoch_blocks", m.EpochBlocks))
}

// guestArgs splits the positional arguments into the guest and its own
// arguments: [GUEST] [-- ARGS...]. Flags must precede GUEST (the CLI library
// stops reading flags at the first positional argument), so a flag-like
// word after GUEST is refused rather than silently handed to the guest.
func guestArgs(c *cli.Context) (string, []string, error) {
	name := guests.Default
	args := c.Args().Slice()
	if len(args) > 0 && args[0] != "--" {
		name, args = args[0], args[1:]
	}
	if len(args) > 0 && args[0] == "--" {
		return name, args[1:], nil
	}
	for _, a := range args {
		if strings.HasPrefix(a, "-") {
			return "", nil, fmt.Errorf("%q after the guest name: put hvft's flags before GUEST and the guest's arguments after --", a)
		}
	}
	if len(args) > 0 {
		// The CLI library swallows a "--" that comes first, so "run -- 5"
		// arrives as "run 5": name the guest whenever it takes arguments.
		return "", nil, fmt.Errorf("unexpected arguments %q after guest %q: name the guest, then its arguments after --, as in: hvft %s %s -- ARGS", args, name, c.Command.Name, guests.Default)
	}
	return name, nil, nil
}
