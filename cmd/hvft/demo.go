package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/urfave/cli/v2"

	"hvft/guests"
	"hvft/replica"
)

func demoCommand() *cli.Command {
	return &cli.Command{
		Name:      "demo",
		Usage:     "run a replicated pair, kill the primary, watch the backup take over",
		ArgsUsage: "[GUEST] [-- GUEST-ARGS...]",
		Description: "Starts `hvft primary` and `hvft backup` as separate processes on loopback, shows the\n" +
			"guest's console as one stream (each output sequence number once), SIGKILLs the primary\n" +
			"after --kill-after, and shows the backup taking over with the output going on without a\n" +
			"gap. Ends with a summary: failover timings, epochs replayed, hashes compared.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "kill-after", Value: "1s", Usage: "when to SIGKILL the primary: a duration (1s, 800ms) or a number of epochs (40); \"never\" to let it finish"},
			&cli.StringFlag{Name: "protocol", Value: "bounded", Usage: "bounded or strict (see hvft primary --help)"},
			&cli.Uint64Flag{Name: "epoch-blocks", Value: 100_000, Usage: "epoch length in translation blocks"},
			&cli.DurationFlag{Name: "heartbeat", Value: 50 * time.Millisecond, Usage: "heartbeat interval"},
			&cli.DurationFlag{Name: "failure-timeout", Value: 500 * time.Millisecond, Usage: "silence after which a replica declares its peer dead"},
			&cli.DurationFlag{Name: "timeout", Value: 2 * time.Minute, Usage: "give up on the demo after this long"},
			&cli.StringFlag{Name: "report", Usage: "write the demo's summary as JSON to this file"},
			&cli.StringFlag{Name: "disk", Usage: "shared disk image for both replicas (created when absent)"},
			&cli.StringFlag{Name: "disk-size", Value: "4MiB", Usage: "size of a disk image that --disk creates"},
			&cli.StringFlag{Name: "disk-sync", Value: "always", Usage: "always or never (see hvft run --help)"},
		},
		Action: demoAction,
	}
}

// killPlan is --kill-after: an epoch count or a duration.
type killPlan struct {
	never  bool
	epochs uint64
	after  time.Duration
}

func parseKillAfter(s string) (killPlan, error) {
	if s == "never" {
		return killPlan{never: true}, nil
	}
	if n, err := strconv.ParseUint(s, 10, 64); err == nil && n > 0 {
		return killPlan{epochs: n}, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d > 0 {
		return killPlan{after: d}, nil
	}
	return killPlan{}, fmt.Errorf("--kill-after %q: want a duration (1s), a number of epochs (40) or never", s)
}

// demoSummary is what the demo found.
type demoSummary struct {
	Guest          string          `json:"guest"`
	Killed         bool            `json:"killed"`
	KilledAtEpoch  uint64          `json:"killed_at_epoch"`
	KillUnixMS     int64           `json:"kill_unix_ms,omitempty"`
	KillToLiveMS   *float64        `json:"kill_to_live_ms,omitempty"`
	ConsoleBytes   uint64          `json:"console_bytes"`
	Duplicates     uint64          `json:"duplicates_dropped"`
	Gaps           uint64          `json:"gaps"`
	Backup         *replica.Report `json:"backup"`
	Primary        *replica.Report `json:"primary,omitempty"`
	PrimaryOutputs uint64          `json:"-"`
}

func demoAction(c *cli.Context) error {
	plan, err := parseKillAfter(c.String("kill-after"))
	if err != nil {
		return err
	}
	name, args, err := guestArgs(c)
	if err != nil {
		return err
	}
	if _, _, err := guests.Load(name); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("finding the hvft binary: %w", err)
	}
	dir, err := os.MkdirTemp("", "hvft-demo")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(c.Context, c.Duration("timeout"))
	defer cancel()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("opening a port for the primary: %w", err)
	}
	lnFile, err := ln.(*net.TCPListener).File()
	ln.Close()
	if err != nil {
		return err
	}
	defer lnFile.Close()

	common := []string{"--log-level", c.String("log-level"), "--log-format", c.String("log-format")}
	shared := []string{"--console-stream", "--epoch-blocks", strconv.FormatUint(c.Uint64("epoch-blocks"), 10),
		"--heartbeat", c.Duration("heartbeat").String(), "--failure-timeout", c.Duration("failure-timeout").String()}
	if disk := c.String("disk"); disk != "" {
		// Created here, once, so the two replicas cannot race to create it.
		if _, _, _, err := diskConfig(c); err != nil {
			return err
		}
		shared = append(shared, "--disk", disk, "--disk-sync", c.String("disk-sync"))
	}
	guest := append([]string{name, "--"}, args...)
	primaryReport, backupReport := filepath.Join(dir, "primary.json"), filepath.Join(dir, "backup.json")

	pArgs := append(append(append(append([]string{}, common...), "primary", "--listen", "fd:3", "--backup-wait", "30s",
		"--protocol", c.String("protocol"), "--report", primaryReport), shared...), guest...)
	bArgs := append(append(append(append([]string{}, common...), "backup", "--primary", ln.Addr().String(),
		"--report", backupReport), shared...), guest...)

	merger := replica.NewMerger(c.App.Writer)
	say := func(format string, a ...any) { fmt.Fprintf(c.App.ErrWriter, "[demo] "+format+"\n", a...) }

	var primaryEpoch atomic.Uint64
	killNow := make(chan struct{}, 1)
	onPrimaryEpoch := func(e uint64) {
		primaryEpoch.Store(e)
		if plan.epochs > 0 && e >= plan.epochs {
			select {
			case killNow <- struct{}{}:
			default:
			}
		}
	}
	var readers sync.WaitGroup
	start := func(label string, argv []string, onEpoch func(uint64), extra *os.File) (*exec.Cmd, error) {
		cmd := exec.CommandContext(ctx, self, argv...)
		if extra != nil {
			cmd.ExtraFiles = []*os.File{extra}
		}
		// Pipes of our own rather than StdoutPipe: Wait closes those, and
		// a child's last lines must be read after it exits.
		stdout, stdoutW, err := os.Pipe()
		if err != nil {
			return nil, err
		}
		stderr, stderrW, err := os.Pipe()
		if err != nil {
			return nil, err
		}
		cmd.Stdout, cmd.Stderr = stdoutW, stderrW
		err = cmd.Start()
		stdoutW.Close()
		stderrW.Close()
		if err != nil {
			stdout.Close()
			stderr.Close()
			return nil, fmt.Errorf("starting the %s: %w", label, err)
		}
		readers.Add(2)
		go func() {
			defer readers.Done()
			defer stdout.Close()
			if err := merger.Read(stdout, onEpoch); err != nil {
				say("%s console: %v", label, err)
			}
			io.Copy(io.Discard, stdout)
		}()
		go func() {
			defer readers.Done()
			defer stderr.Close()
			prefix(c.App.ErrWriter, label, stderr)
		}()
		return cmd, nil
	}
	primary, err := start("primary", pArgs, onPrimaryEpoch, lnFile)
	if err != nil {
		return err
	}
	backup, err := start("backup", bArgs, nil, nil)
	if err != nil {
		primary.Process.Kill()
		return err
	}
	say("primary pid %d, backup pid %d; guest %s; kill after %s", primary.Process.Pid, backup.Process.Pid, name, c.String("kill-after"))

	primaryDone := make(chan error, 1)
	go func() { primaryDone <- primary.Wait() }()
	var timer <-chan time.Time
	if plan.after > 0 {
		timer = time.After(plan.after)
	}
	sum := demoSummary{Guest: name}
	select {
	case <-killNow:
	case <-timer:
	case err := <-primaryDone:
		say("the primary finished before the kill (%v)", exitDesc(err))
		primaryDone <- err
	case <-ctx.Done():
	}
	select {
	case err := <-primaryDone:
		primaryDone <- err
	default:
		if !plan.never {
			primary.Process.Kill()
			sum.Killed = true
			sum.KillUnixMS = time.Now().UnixMilli()
			sum.KilledAtEpoch = primaryEpoch.Load()
			say("SIGKILL primary (pid %d) after epoch %d", primary.Process.Pid, sum.KilledAtEpoch)
		}
	}
	<-primaryDone
	backupErr := backup.Wait()
	readers.Wait()
	if ctx.Err() != nil {
		return fmt.Errorf("demo did not finish within %v", c.Duration("timeout"))
	}
	gapErr := merger.Close()
	sum.ConsoleBytes, sum.Duplicates, sum.Gaps = merger.Written(), merger.Duplicates, merger.Gaps
	sum.Backup = readReport(backupReport)
	sum.Primary = readReport(primaryReport)
	if sum.Backup == nil {
		return fmt.Errorf("the backup wrote no report (%v)", exitDesc(backupErr))
	}
	if f := sum.Backup.Failover; f != nil && f.LiveUnixMS > 0 && sum.Killed {
		v := float64(f.LiveUnixMS - sum.KillUnixMS)
		sum.KillToLiveMS = &v
	}
	printSummary(c.App.ErrWriter, sum)
	if path := c.String("report"); path != "" {
		if err := writeJSON(path, sum); err != nil {
			return err
		}
	}
	switch {
	case gapErr != nil:
		return gapErr
	case sum.Backup.Error != "":
		return fmt.Errorf("backup: %s", sum.Backup.Error)
	case sum.Backup.ExitCode == nil:
		return fmt.Errorf("backup ended without an exit code (%v)", exitDesc(backupErr))
	}
	return exitCode(*sum.Backup.ExitCode & 0xFF)
}

func exitDesc(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.String()
	}
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

func readReport(path string) *replica.Report {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var r replica.Report
	if json.Unmarshal(data, &r) != nil {
		return nil
	}
	return &r
}

// prefix copies a child's log lines to w, each marked with its role.
func prefix(w io.Writer, label string, r io.Reader) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		fmt.Fprintf(w, "%-7s | %s\n", label, sc.Text())
	}
}

func printSummary(w io.Writer, s demoSummary) {
	fmt.Fprintf(w, "\n== hvft demo summary (%s) ==\n", s.Guest)
	fmt.Fprintf(w, "console      %d bytes, every sequence number exactly once (%d repeats dropped, %d gaps)\n", s.ConsoleBytes, s.Duplicates, s.Gaps)
	b := s.Backup
	if !s.Killed {
		fmt.Fprintf(w, "failover     none: the primary was not killed\n")
	} else {
		fmt.Fprintf(w, "kill         SIGKILL of the primary after its epoch %d\n", s.KilledAtEpoch)
		if f := b.Failover; f != nil {
			fmt.Fprintf(w, "failover     detected after %.1f ms of silence (%s)\n", f.DetectedAfterMS, f.Reason)
			fmt.Fprintf(w, "             held epochs through %d, had executed %d; replay %.1f ms; %d outputs re-emitted\n", f.EpochsHeld, f.EpochsExecuted, f.ReplayMS, f.Reemitted)
			if s.KillToLiveMS != nil {
				fmt.Fprintf(w, "             live at epoch %d: kill to live %.0f ms\n", f.LiveAtEpoch, *s.KillToLiveMS)
			}
		}
	}
	if f := b.Failover; f != nil && f.Uncertain > 0 {
		fmt.Fprintf(w, "             %d disk operation(s) in flight completed as UNCERTAIN; the guest reissued them\n", f.Uncertain)
	}
	fmt.Fprintf(w, "backup       %d epochs, %d state hashes compared with the primary's, all equal; became primary: %v\n", b.Epochs, b.HashesCompared, b.BecamePrimary)
	if b.ExitCode != nil {
		fmt.Fprintf(w, "guest        exit code %d, final hash %s\n", *b.ExitCode, b.FinalHash)
	}
	if b.Error != "" {
		fmt.Fprintf(w, "backup error %s\n", b.Error)
	}
}
