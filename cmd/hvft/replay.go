package main

import (
	"encoding/hex"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"

	"hvft/guests"
	"hvft/replica"
	"hvft/vm"
	"hvft/vm/guestelf"
	"hvft/vm/linux"
)

func recordFlag() cli.Flag {
	return &cli.StringFlag{Name: "record", Usage: "write the run's log (every environment answer and epoch end, as sent to a backup) to this file, for hvft replay"}
}

func replayCommand() *cli.Command {
	return &cli.Command{
		Name:      "replay",
		Usage:     "re-execute a recorded log with no host input, checking every epoch's state hash",
		ArgsUsage: "LOG [GUEST]",
		Description: "LOG is a file written by --record (hvft run, primary or backup). GUEST is the image it\n" +
			"ran (a built-in name or a path); by default the built-in whose digest the log names. For\n" +
			"a Linux program's log (--linux), GUEST is the program, by default the path the log names.\n" +
			"A log whose tail was torn by a crash replays up to its last whole epoch and says so.\n" +
			"For a run that failed over, give the old primary's log and --then the new primary's.\n\n" +
			"Exit status: 0 when every whole epoch the log holds (up to --until-epoch) replayed and its\n" +
			"state hash matched the recorded one; 125 on any divergence (in any epoch, the power-off\n" +
			"epoch included), on a recorded epoch end that carries no hash to compare, and on a damaged\n" +
			"log (a record that fails its checksum, not a torn tail), after replaying what precedes it.",
		Flags: append(machineFlags(),
			&cli.StringFlag{Name: "then", Usage: "the new primary's log, after a failover: replay the old primary's up to the split, then this one"},
			&cli.Uint64Flag{Name: "until-epoch", Usage: "stop after this epoch"},
			&cli.BoolFlag{Name: "dump", Usage: "print the registers, the device state and --dump-mem where the replay stopped"},
			&cli.StringFlag{Name: "dump-mem", Value: "0x100000:256", Usage: "memory range for --dump: ADDR:LEN (hex or decimal)"},
			&cli.StringFlag{Name: "report", Usage: "write a JSON report to this file"},
		),
		Action: replayAction,
	}
}

func replayAction(c *cli.Context) error {
	args, then, err := trailingFlag(c.Args().Slice(), "then")
	if err != nil {
		return fmt.Errorf("replay: %w", err)
	}
	if then == "" {
		then = c.String("then")
	} else if c.String("then") != "" {
		return fmt.Errorf("replay: --then given twice")
	}
	if len(args) < 1 || len(args) > 2 {
		return fmt.Errorf("replay takes LOG and an optional GUEST (got %d arguments)", len(args))
	}
	if err := checkReportPath(c); err != nil {
		return err
	}
	log, err := replica.ReadLog(args[0])
	if err != nil {
		return err
	}
	if then != "" {
		second, err := replica.ReadLog(then)
		if err != nil {
			return err
		}
		var note string
		if log, note, err = replica.MergeLogs(log, second); err != nil {
			return err
		}
		fmt.Fprintf(c.App.ErrWriter, "hvft: %s\n", note)
	}
	if log.Torn != "" {
		fmt.Fprintf(c.App.ErrWriter, "hvft: %s: replaying up to epoch %d, the last whole one\n", log.Torn, log.Epochs)
	}
	if log.Damage != "" {
		fmt.Fprintf(c.App.ErrWriter, "hvft: %s: replaying the %d whole epochs before it; the replay fails\n", log.Damage, log.Epochs)
	}
	var img *guestelf.Image
	var prog *linux.Program
	if log.Header.Linux != nil {
		prog, img, err = replayProgram(argAt(args, 1), log.Header.Linux, log.Header.ImageDigest)
	} else {
		img, err = replayImage(argAt(args, 1), log.Header)
	}
	if err != nil {
		return err
	}
	cfg, err := machineConfig(c) // only the TLB is ours to choose: the log fixes the rest
	if err != nil {
		return err
	}
	opt := replica.ReplayOptions{Log: log, Image: img, Program: prog, TLB: cfg.TLB, UntilEpoch: c.Uint64("until-epoch")}
	if c.Bool("dump") {
		addr, n, err := parseRange(c.String("dump-mem"))
		if err != nil {
			return err
		}
		opt.Dump = func(m *vm.Machine) error { return dump(c.App.Writer, m, addr, n) }
	}
	res, err := replica.Replay(c.Context, opt)
	if res != nil {
		var end string
		switch {
		case err != nil:
		case res.PowerOff:
			end = fmt.Sprintf("; the guest powered off (exit code %d)", *res.ExitCode)
		case res.Epochs < log.Epochs:
			end = "; stopped at --until-epoch"
		case log.Torn != "":
			end = "; the torn tail after it was not replayed"
		default:
			end = "; the log ends there, without a power-off"
		}
		fmt.Fprintf(c.App.ErrWriter, "hvft: replayed %d epochs, %d of %d state hashes matched the log's; final hash %s%s\n",
			res.Epochs, res.Matched, res.Epochs, res.FinalHash, end)
		if path := c.String("report"); path != "" {
			if werr := writeJSON(path, res); werr != nil && err == nil {
				err = werr
			}
		}
	}
	return err
}

// replayImage finds the guest a log was recorded with.
func replayImage(name string, h replica.LogHeader) (*guestelf.Image, error) {
	load := func(data []byte, label string) (*guestelf.Image, error) {
		img, err := guestelf.Parse(data, h.RAMSize, vm.ImageMinAddr)
		if err != nil {
			return nil, fmt.Errorf("guest %s: %w", label, err)
		}
		return img, nil
	}
	if name != "" {
		data, label, err := guests.Load(name)
		if err != nil {
			return nil, err
		}
		return load(data, label)
	}
	for _, g := range guests.List() {
		data, _ := guests.Builtin(g.Name)
		if img, err := load(data, g.Name); err == nil && hex.EncodeToString(img.Digest[:]) == h.ImageDigest {
			return img, nil
		}
	}
	return nil, fmt.Errorf("no built-in guest has digest %s: name the guest image the log was recorded with", h.ImageDigest)
}

func parseRange(s string) (uint64, uint64, error) {
	a, n, ok := strings.Cut(s, ":")
	addr, err1 := strconv.ParseUint(a, 0, 64)
	size, err2 := strconv.ParseUint(n, 0, 64)
	if !ok || err1 != nil || err2 != nil || size == 0 || size > 1<<20 {
		return 0, 0, fmt.Errorf("--dump-mem %q: want ADDR:LEN with LEN at most 1 MiB", s)
	}
	return addr, size, nil
}

func dump(w io.Writer, m *vm.Machine, addr, n uint64) error {
	regs, err := m.Registers()
	if err != nil {
		return err
	}
	fmt.Fprintln(w, "registers:")
	for i, r := range regs {
		fmt.Fprintf(w, "  %-7s %016x", r.Name, r.Value)
		if i%4 == 3 {
			fmt.Fprintln(w)
		}
	}
	fmt.Fprintln(w)
	b := m.Board()
	fmt.Fprintf(w, "devices:\n  console out %d bytes, input waiting %d; timer %d us; PIC mask %#x pending %#x in service %#x\n",
		b.ConsoleOut, len(b.RX), b.TimerPeriod, b.PICMask, b.PICPending, b.PICInService)
	fmt.Fprintf(w, "  disk %d sectors, status %#x, %d operations", b.DiskSectors, b.DiskStatus, b.DiskOps)
	if b.DiskOp != nil {
		fmt.Fprintf(w, ", in flight: %v", *b.DiskOp)
	}
	fmt.Fprintf(w, "\n  powered off %v, exit code %d\n", b.PoweredOff, b.ExitCode)
	mem, err := m.ReadMemory(addr, n)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "memory %#x+%d:\n%s", addr, n, hex.Dump(mem))
	return nil
}
