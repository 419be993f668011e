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
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"hvft/guests"
	"hvft/replica"
	"hvft/vm"
)

func demoCommand() *cli.Command {
	return &cli.Command{
		Name:      "demo",
		Usage:     "run a replicated pair, kill the primary, watch the backup take over",
		ArgsUsage: "[GUEST] [-- GUEST-ARGS...]",
		Description: "Starts `hvft primary` and `hvft backup` as separate processes on loopback, shows the\n" +
			"guest's console as one stream (each output sequence number once), SIGKILLs the primary\n" +
			"after --kill-after, and shows the backup taking over with the output going on without a\n" +
			"gap. Ends with a summary: failover timings, epochs replayed, hashes compared, read\n" +
			"from each replica's report. Exits 125 when any replica reported a divergence.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "kill-after", Value: "1s", Usage: "when to SIGKILL the primary: a duration (1s, 800ms) or a number of epochs (40); \"never\" to let it finish"},
			&cli.StringFlag{Name: "protocol", Value: "bounded", Usage: "bounded or strict (see hvft primary --help)"},
			&cli.Uint64Flag{Name: "epoch-blocks", Value: 100_000, Usage: "epoch length in translation blocks"},
			&cli.StringFlag{Name: "epoch-clock", Value: "always", Usage: "always or adaptive (see hvft run --help)"},
			&cli.DurationFlag{Name: "heartbeat", Value: 50 * time.Millisecond, Usage: "heartbeat interval"},
			&cli.DurationFlag{Name: "failure-timeout", Value: 500 * time.Millisecond, Usage: "silence after which a replica declares its peer dead"},
			&cli.DurationFlag{Name: "timeout", Value: 2 * time.Minute, Usage: "give up on the demo after this long"},
			&cli.StringFlag{Name: "report", Usage: "write the demo's summary as JSON to this file"},
			&cli.StringFlag{Name: "disk", Usage: "shared disk image for both replicas (created when absent)"},
			&cli.StringFlag{Name: "disk-size", Value: "4MiB", Usage: "size of a disk image that --disk creates"},
			&cli.StringFlag{Name: "disk-sync", Value: "always", Usage: "always or never (see hvft run --help)"},
			&cli.BoolFlag{Name: "rejoin", Usage: "after each failover, start a new backup that joins the new primary by state transfer"},
			&cli.IntFlag{Name: "kills", Value: 1, Usage: "how many successive primaries to kill (more than one needs --rejoin); --kill-after counts from each one's takeover"},
			&cli.StringFlag{Name: "arbiter", Usage: "etcd://HOST:PORT/PREFIX or file:DIR: the replicas' generation arbiter (rule 7; see hvft primary --help)"},
			&cli.BoolFlag{Name: "linux", Usage: "GUEST is a static Linux program (see hvft run --help)"},
			&cli.StringFlag{Name: "root", Value: "/", Usage: "with --linux: the directory the program sees as /"},
			&cli.StringSliceFlag{Name: "env", Usage: "with --linux: NAME=VALUE in the program's environment (repeatable)"},
			&cli.StringFlag{Name: "journal-dir", Usage: "with --linux: where the replicas keep their journal (default: --root)"},
			&cli.StringFlag{Name: "stdin", Usage: "with --linux: a file both replicas read as the program's standard input (a new primary skips what the old one read)"},
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
	Guest         string   `json:"guest"`
	Killed        bool     `json:"killed"`
	KilledAtEpoch uint64   `json:"killed_at_epoch"`
	KillUnixMS    int64    `json:"kill_unix_ms,omitempty"`
	KillToLiveMS  *float64 `json:"kill_to_live_ms,omitempty"`
	ConsoleBytes  uint64   `json:"console_bytes"`
	Duplicates    uint64   `json:"duplicates_dropped"`
	Gaps          uint64   `json:"gaps"`
	// Backup is the report of the replica that finished the run.
	Backup   *replica.Report `json:"backup"`
	Kills    []demoKill      `json:"kills"`
	Replicas []demoReplica   `json:"replicas"`
}

// demoKill is one SIGKILL of a primary and the takeover that followed.
type demoKill struct {
	Victim       string            `json:"victim"`
	AtEpoch      uint64            `json:"at_epoch"`
	UnixNS       int64             `json:"unix_ns"`
	Survivor     string            `json:"survivor"`
	KillToLiveMS *float64          `json:"kill_to_live_ms,omitempty"`
	Failover     *replica.Failover `json:"failover,omitempty"`
	survivor     *demoChild
}

// demoReplica is the report of one replica that lived to write it.
type demoReplica struct {
	Label  string          `json:"label"`
	Report *replica.Report `json:"report"`
}

// demoChild is one hvft process the demo runs.
type demoChild struct {
	label    string
	cmd      *exec.Cmd
	report   string
	addr     string        // where it accepts a joining backup
	done     chan struct{} // it exited
	err      error
	primary  chan struct{} // closed at its first epoch as primary
	joined   chan struct{} // closed when it has joined its primary
	once     sync.Once
	joinOnce sync.Once
	epoch    atomic.Uint64 // its latest epoch as primary
	becameAt atomic.Uint64 // the epoch at which it became primary
	since    atomic.Int64  // unix ns when it became primary
}

func demoAction(c *cli.Context) error {
	plan, err := parseKillAfter(c.String("kill-after"))
	if err != nil {
		return err
	}
	if err := checkDetector(c); err != nil {
		return err
	}
	if err := checkReportPath(c); err != nil {
		return err
	}
	kills := c.Int("kills")
	if kills < 1 || kills > 100 {
		return fmt.Errorf("--kills %d: want 1 to 100", kills)
	}
	if kills > 1 && !c.Bool("rejoin") {
		return fmt.Errorf("--kills %d needs --rejoin: without a new backup after each failover there is nobody to take over", kills)
	}
	name, args, err := guestArgs(c)
	if err != nil {
		return err
	}
	linuxArgs, err := demoLinuxArgs(c, name)
	if err != nil {
		return err
	}
	if linuxArgs == nil {
		if _, _, err := guests.Load(name); err != nil {
			return err
		}
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

	common := []string{"--log-level", c.String("log-level"), "--log-format", c.String("log-format")}
	// The demo's replicas authenticate and encrypt their link with a key of
	// their own, as replicas on two machines would.
	keyFile := filepath.Join(dir, "link.key")
	if err := replica.GenerateKey(keyFile); err != nil {
		return err
	}
	if _, err := vm.ParseEpochClock(c.String("epoch-clock")); err != nil {
		return fmt.Errorf("--epoch-clock: %w", err)
	}
	shared := []string{"--console-stream", "--key-file", keyFile, "--epoch-blocks", strconv.FormatUint(c.Uint64("epoch-blocks"), 10), "--epoch-clock", c.String("epoch-clock"),
		"--heartbeat", c.Duration("heartbeat").String(), "--failure-timeout", c.Duration("failure-timeout").String()}
	if disk := c.String("disk"); disk != "" {
		// Created here, once, so the replicas cannot race to create it.
		if _, _, _, err := diskConfig(c); err != nil {
			return err
		}
		shared = append(shared, "--disk", disk, "--disk-sync", c.String("disk-sync"))
	}
	shared = append(shared, linuxArgs...)
	if arb := c.String("arbiter"); arb != "" {
		g, err := replica.OpenArbiter(arb, nil) // refuse a bad one before any replica starts
		if err != nil {
			return err
		}
		g.Close()
		shared = append(shared, "--arbiter", arb)
	}
	guest := append([]string{name, "--"}, args...)
	merger := replica.NewMerger(c.App.Writer)
	say := func(format string, a ...any) { fmt.Fprintf(c.App.ErrWriter, "[demo] "+format+"\n", a...) }
	var readers sync.WaitGroup
	var children []*demoChild

	start := func(label string, role []string) (*demoChild, error) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("opening a port for the %s: %w", label, err)
		}
		lnFile, err := ln.(*net.TCPListener).File()
		addr := ln.Addr().String()
		ln.Close()
		if err != nil {
			return nil, err
		}
		defer lnFile.Close()
		ch := &demoChild{label: label, addr: addr, report: filepath.Join(dir, fmt.Sprintf("r%d.json", len(children))),
			done: make(chan struct{}), primary: make(chan struct{}), joined: make(chan struct{})}
		argv := append(append(append(append([]string{}, common...), role...), "--listen", "fd:3", "--report", ch.report), shared...)
		argv = append(argv, guest...)
		ch.cmd = exec.CommandContext(ctx, self, argv...)
		ch.cmd.ExtraFiles = []*os.File{lnFile}
		// A demo that is itself killed takes its replicas with it: they
		// would otherwise run on as orphans (a test's bound kills the demo).
		ch.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
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
		ch.cmd.Stdout, ch.cmd.Stderr = stdoutW, stderrW
		if in := c.String("stdin"); in != "" {
			f, err := os.Open(in)
			if err != nil {
				return nil, fmt.Errorf("--stdin: %w", err)
			}
			defer f.Close()
			ch.cmd.Stdin = f
		}
		err = ch.cmd.Start()
		stdoutW.Close()
		stderrW.Close()
		if err != nil {
			stdout.Close()
			stderr.Close()
			return nil, fmt.Errorf("starting the %s: %w", label, err)
		}
		children = append(children, ch)
		readers.Add(2)
		go func() {
			defer readers.Done()
			defer stdout.Close()
			err := merger.Read(stdout, func(e uint64) {
				ch.once.Do(func() {
					ch.becameAt.Store(e - 1)
					ch.since.Store(time.Now().UnixNano())
					close(ch.primary)
				})
				ch.epoch.Store(e)
			}, func(uint64) { ch.joinOnce.Do(func() { close(ch.joined) }) })
			if err != nil {
				say("%s console: %v", label, err)
			}
			io.Copy(io.Discard, stdout)
		}()
		go func() {
			defer readers.Done()
			defer stderr.Close()
			prefix(c.App.ErrWriter, label, stderr)
		}()
		go func() { ch.err = ch.cmd.Wait(); close(ch.done) }()
		return ch, nil
	}
	defer func() {
		for _, ch := range children {
			ch.cmd.Process.Kill()
			<-ch.done
		}
	}()

	cur, err := start("primary", []string{"primary", "--backup-wait", "30s", "--protocol", c.String("protocol")})
	if err != nil {
		return err
	}
	next, err := start("backup", []string{"backup", "--primary", cur.addr, "--protocol", c.String("protocol")})
	if err != nil {
		return err
	}
	say("primary pid %d, backup pid %d; guest %s; kill after %s, %d time(s)%s", cur.cmd.Process.Pid, next.cmd.Process.Pid, name,
		c.String("kill-after"), kills, map[bool]string{true: ", a new backup joining after each failover", false: ""}[c.Bool("rejoin")])

	sum := demoSummary{Guest: name}
	for k := 1; k <= kills && !plan.never; k++ {
		if !waitForKill(ctx, cur, plan) {
			say("the %s finished before kill %d (%v)", cur.label, k, exitDesc(cur.err))
			break
		}
		cur.cmd.Process.Kill()
		kt := time.Now()
		sum.Kills = append(sum.Kills, demoKill{Victim: cur.label, AtEpoch: cur.epoch.Load(), UnixNS: kt.UnixNano(), Survivor: next.label, survivor: next})
		say("SIGKILL %s (pid %d) after epoch %d", cur.label, cur.cmd.Process.Pid, cur.epoch.Load())
		<-cur.done
		select {
		case <-next.primary:
			say("%s took over at epoch %d", next.label, next.becameAt.Load())
		case <-next.done:
		case <-ctx.Done():
		}
		cur, next = next, nil
		if c.Bool("rejoin") {
			select {
			case <-cur.done:
			default:
				label := fmt.Sprintf("backup-%d", k+1)
				if next, err = start(label, []string{"backup", "--join", "--primary", cur.addr, "--protocol", c.String("protocol")}); err != nil {
					return err
				}
				say("%s (pid %d) joins %s", label, next.cmd.Process.Pid, cur.label)
				// The next kill counts from the moment the pair is whole.
				select {
				case <-next.joined:
					cur.becameAt.Store(cur.epoch.Load())
					cur.since.Store(time.Now().UnixNano())
					say("%s joined %s at epoch %d", label, cur.label, cur.epoch.Load())
				case <-next.done:
				case <-cur.done:
				case <-ctx.Done():
				}
			}
		}
		if next == nil {
			break
		}
	}
	for _, ch := range children {
		select {
		case <-ch.done:
		case <-ctx.Done():
		}
	}
	readers.Wait()
	if ctx.Err() != nil {
		return fmt.Errorf("demo did not finish within %v", c.Duration("timeout"))
	}
	gapErr := merger.Close()
	sum.ConsoleBytes, sum.Duplicates, sum.Gaps = merger.Written(), merger.Duplicates, merger.Gaps
	sum.Killed = len(sum.Kills) > 0
	for i := range sum.Kills {
		kl := &sum.Kills[i]
		if r := readReport(kl.survivor.report); r != nil && r.Failover != nil && r.Failover.LiveUnixNS > 0 {
			v := float64(r.Failover.LiveUnixNS-kl.UnixNS) / 1e6
			kl.KillToLiveMS = &v
			kl.Failover = r.Failover
		}
	}
	if sum.Killed {
		sum.KilledAtEpoch, sum.KillUnixMS, sum.KillToLiveMS = sum.Kills[0].AtEpoch, sum.Kills[0].UnixNS/1e6, sum.Kills[0].KillToLiveMS
	}
	for _, ch := range children {
		if r := readReport(ch.report); r != nil {
			sum.Replicas = append(sum.Replicas, demoReplica{Label: ch.label, Report: r})
		}
	}
	last := children[len(children)-1]
	if next != nil {
		last = cur // the final backup ends with the primary; the primary's report is the run's
	}
	sum.Backup = readReport(last.report)
	if sum.Backup == nil {
		return fmt.Errorf("the %s wrote no report (%v)", last.label, exitDesc(last.err))
	}
	printSummary(c.App.ErrWriter, sum)
	if path := c.String("report"); path != "" {
		if err := writeJSON(path, sum); err != nil {
			return err
		}
	}
	if err := divergences(sum.Replicas); err != nil {
		return err
	}
	switch {
	case gapErr != nil:
		return gapErr
	case sum.Backup.Error != "":
		return fmt.Errorf("%s: %s", last.label, sum.Backup.Error)
	case sum.Backup.ExitCode == nil:
		return fmt.Errorf("%s ended without an exit code (%v)", last.label, exitDesc(last.err))
	}
	return exitCode(*sum.Backup.ExitCode & 0xFF)
}

// waitForKill waits until the plan says to kill ch (its epochs as primary,
// or its time as primary); false when ch finished first.
func waitForKill(ctx context.Context, ch *demoChild, plan killPlan) bool {
	select {
	case <-ch.primary:
	case <-ch.done:
		return false
	case <-ctx.Done():
		return false
	}
	t := time.NewTicker(time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ch.done:
			return false
		case <-ctx.Done():
			return false
		case <-t.C:
		}
		if plan.epochs > 0 && ch.epoch.Load() >= ch.becameAt.Load()+plan.epochs {
			return true
		}
		if plan.after > 0 && time.Since(time.Unix(0, ch.since.Load())) >= plan.after {
			return true
		}
	}
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

// replicaVerdict is what a replica's report says it found: for a backup,
// the state hashes it compared with its primary's and whether they were
// all equal; for either role, any divergence it reported ("" for a
// primary with nothing to say).
func replicaVerdict(rep *replica.Report) string {
	own := rep.Divergence != "" && rep.Error != "" // its own run stopped on it
	if rep.Role != "backup" {
		if rep.Divergence == "" {
			return ""
		}
		return fmt.Sprintf("its backup DIVERGED: %s; it went on alone", rep.Divergence)
	}
	if own {
		v := fmt.Sprintf("DIVERGED after %d state hashes compared equal with its primary's: %s; it stopped", rep.HashesCompared, rep.Divergence)
		if rep.BecamePrimary {
			v += " (it had become primary)"
		}
		return v
	}
	v := "no state hash compared with its primary's"
	if rep.HashesCompared > 0 {
		v = fmt.Sprintf("%d state hashes compared with its primary's, all equal", rep.HashesCompared)
	}
	v += fmt.Sprintf(", over %d epochs; became primary: %v", rep.Epochs, rep.BecamePrimary)
	if rep.Divergence != "" {
		v += "; then its backup DIVERGED: " + rep.Divergence
	}
	if rep.Error != "" {
		v += "; then it failed: " + rep.Error
	}
	return v
}

// divergences is the demo's verdict from every report: an error naming
// each replica that reported a divergence, or nil.
func divergences(reps []demoReplica) error {
	var found []string
	for _, r := range reps {
		if r.Report.Divergence != "" {
			found = append(found, fmt.Sprintf("the %s reported: %s", r.Label, r.Report.Divergence))
		}
	}
	if len(found) == 0 {
		return nil
	}
	return fmt.Errorf("the replicas diverged: %s", strings.Join(found, "; "))
}

func printSummary(w io.Writer, s demoSummary) {
	fmt.Fprintf(w, "\n== hvft demo summary (%s) ==\n", s.Guest)
	fmt.Fprintf(w, "console      %d bytes, every sequence number exactly once (%d repeats dropped, %d gaps)\n", s.ConsoleBytes, s.Duplicates, s.Gaps)
	if !s.Killed {
		fmt.Fprintf(w, "failover     none: the primary was not killed\n")
	}
	for _, k := range s.Kills {
		fmt.Fprintf(w, "kill         SIGKILL of the %s after its epoch %d; the %s took over\n", k.Victim, k.AtEpoch, k.Survivor)
		if f := k.Failover; f != nil {
			fmt.Fprintf(w, "failover     detected after %.1f ms of silence (%s)\n", f.DetectedAfterMS, f.Reason)
			fmt.Fprintf(w, "             held epochs through %d, had executed %d; replay %.1f ms; %d outputs re-emitted\n", f.EpochsHeld, f.EpochsExecuted, f.ReplayMS, f.Reemitted)
			if k.KillToLiveMS != nil {
				fmt.Fprintf(w, "             live at epoch %d: kill to live %.1f ms\n", f.LiveAtEpoch, *k.KillToLiveMS)
			}
			if f.Uncertain > 0 {
				fmt.Fprintf(w, "             %d disk operation(s) in flight completed as UNCERTAIN; the guest reissued them\n", f.Uncertain)
			}
		}
	}
	for _, r := range s.Replicas {
		rep := r.Report
		for _, j := range rep.Joins {
			if rep.Role == "backup" && j.Verified {
				fmt.Fprintf(w, "join         %s joined at epoch %d: %d bytes of RAM received, state hash verified\n", r.Label, j.AtEpoch, j.Bytes)
			} else if j.PauseMS > 0 {
				fmt.Fprintf(w, "             served by %s: pre-copy %.0f ms, pause %.1f ms, %d bytes (%d re-sent at the stop)\n", r.Label, j.PrecopyMS, j.PauseMS, j.Bytes, j.DirtyBytes)
			}
		}
		if line := replicaVerdict(rep); line != "" {
			fmt.Fprintf(w, "replica      %s: %s\n", r.Label, line)
		}
	}
	if b := s.Backup; b != nil {
		if b.ExitCode != nil {
			fmt.Fprintf(w, "guest        exit code %d, final hash %s\n", *b.ExitCode, b.FinalHash)
		}
		if b.Error != "" {
			fmt.Fprintf(w, "error        %s\n", b.Error)
		}
	}
}
