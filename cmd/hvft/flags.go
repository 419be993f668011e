package main

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"

	"hvft/vm"
	"hvft/vm/tlb"
)

// machineFlags are the flags that configure the emulated machine, shared by
// every command that boots one.
func machineFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "ram", Usage: "guest RAM size (bytes, or with K/M/G, KiB/MiB/GiB); default 16MiB, 256MiB with --linux"},
		&cli.StringFlag{Name: "tlb-page", Value: "64KiB", Usage: "bytes one entry of the modelled software TLB covers (power of two, 4KiB to 1GiB)"},
		&cli.IntFlag{Name: "tlb-entries", Usage: fmt.Sprintf("entries of the modelled software TLB (%d to %d); a miss that finds it full evicts one and flushes its pages from the CPU's TLB; a Linux program's default covers a real program's working set (small ones exercise the mechanism and cost it up to half its time)", tlb.MinEntries, tlb.MaxEntries), DefaultText: fmt.Sprintf("%d, or %d with --linux", vm.DefaultTLBEntries, vm.DefaultLinuxTLBEntries)},
		&cli.StringFlag{Name: "tlb-policy", Value: "random", Usage: "TLB replacement: random, fifo or lru"},
		&cli.Uint64Flag{Name: "tlb-seed", Usage: "seed of the random policy (0: drawn from the host and logged)"},
		&cli.Uint64Flag{Name: "epoch-blocks", Value: 100_000, Usage: "epoch length in translation blocks (the epoch clock's unit); every epoch's state hash covers registers, devices and RAM"},
		&cli.StringFlag{Name: "epoch-clock", Value: "always", Usage: "always: count every block, so every epoch is --epoch-blocks long; adaptive: count blocks only while an interrupt can arrive (a timer, input or a disk operation unmasked), and otherwise end epochs at the guest's environment instructions (IN, OUT, CPUID), which costs almost nothing per block (docs/performance.md)"},
		&cli.StringFlag{Name: "disk", Usage: "disk image file for the block device (the shared disk: primary and backup name the same one); created when absent"},
		&cli.StringFlag{Name: "disk-size", Value: "4MiB", Usage: "size of a disk image that --disk creates"},
		&cli.StringFlag{Name: "disk-sync", Value: "always", Usage: "always (a write completes once fsync'd: durable) or never (left to the OS)"},
		&cli.BoolFlag{Name: "linux", Usage: "GUEST is a static x86-64 Linux program (a path), run under hvft's system-call personality (docs/linux.md)"},
		&cli.StringFlag{Name: "root", Value: "/", Usage: "with --linux: the host directory the program sees as /, where its files live (both replicas must reach it)"},
		&cli.StringSliceFlag{Name: "env", Usage: "with --linux: NAME=VALUE in the program's environment (repeatable; the default environment is empty)"},
		&cli.StringFlag{Name: "journal-dir", Usage: "with --linux, replicated: where the journal of the last unrepeatable file call lives (both replicas name the same directory; default: --root)"},
	}
}

// parseSize reads "16MiB", "64K", "4096" and the like.
func parseSize(s string) (uint64, error) {
	t := strings.TrimSpace(strings.ToUpper(s))
	mult := uint64(1)
	for _, u := range []struct {
		suffix string
		mult   uint64
	}{{"GIB", 1 << 30}, {"MIB", 1 << 20}, {"KIB", 1 << 10}, {"GB", 1 << 30}, {"MB", 1 << 20}, {"KB", 1 << 10}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}, {"B", 1}} {
		if rest, ok := strings.CutSuffix(t, u.suffix); ok {
			t, mult = strings.TrimSpace(rest), u.mult
			break
		}
	}
	n, err := strconv.ParseUint(t, 10, 64)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("size %q: want a positive number of bytes, optionally with K, M or G", s)
	}
	if n > (1<<63)/mult {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return n * mult, nil
}

// machineConfig turns the machine flags into a configuration.
func machineConfig(c *cli.Context) (vm.Config, error) {
	var cfg vm.Config
	var err error
	switch {
	case c.String("ram") != "":
		if cfg.RAMSize, err = parseSize(c.String("ram")); err != nil {
			return cfg, fmt.Errorf("--ram: %w", err)
		}
	case c.Bool("linux"):
		cfg.RAMSize = vm.DefaultLinuxRAMSize
	default:
		cfg.RAMSize = vm.DefaultRAMSize
	}
	if cfg.TLB.PageSize, err = parseSize(c.String("tlb-page")); err != nil {
		return cfg, fmt.Errorf("--tlb-page: %w", err)
	}
	switch {
	case c.IsSet("tlb-entries"):
		cfg.TLB.Entries = c.Int("tlb-entries")
	case c.Bool("linux"):
		cfg.TLB.Entries = vm.DefaultLinuxTLBEntries
	default:
		cfg.TLB.Entries = vm.DefaultTLBEntries
	}
	if cfg.TLB.Policy, err = tlb.ParsePolicy(c.String("tlb-policy")); err != nil {
		return cfg, fmt.Errorf("--tlb-policy: %w", err)
	}
	cfg.TLB.Seed = c.Uint64("tlb-seed")
	if cfg.TLB.Seed == 0 {
		var b [8]byte
		if _, err := rand.Read(b[:]); err != nil {
			return cfg, fmt.Errorf("drawing a TLB seed: %w", err)
		}
		cfg.TLB.Seed = binary.LittleEndian.Uint64(b[:]) | 1
	}
	if err := cfg.TLB.Validate(); err != nil {
		return cfg, err
	}
	if cfg.Clock, err = vm.ParseEpochClock(c.String("epoch-clock")); err != nil {
		return cfg, fmt.Errorf("--epoch-clock: %w", err)
	}
	if c.Uint64("epoch-blocks") == 0 {
		return cfg, fmt.Errorf("--epoch-blocks must be positive")
	}
	return cfg, nil
}

// diskConfig reads the disk flags: the image's path, its size in sectors
// (creating it when absent) and the sync policy. No --disk, no disk.
func diskConfig(c *cli.Context) (path string, sectors uint64, sync vm.DiskSync, err error) {
	switch c.String("disk-sync") {
	case "always":
		sync = vm.SyncAlways
	case "never":
		sync = vm.SyncNever
	default:
		return "", 0, 0, fmt.Errorf("--disk-sync %q: want always or never", c.String("disk-sync"))
	}
	path = c.String("disk")
	if path == "" {
		return "", 0, sync, nil
	}
	size, err := parseSize(c.String("disk-size"))
	if err != nil {
		return "", 0, 0, fmt.Errorf("--disk-size: %w", err)
	}
	if sectors, err = vm.DiskSectorsOf(path, size); err != nil {
		return "", 0, 0, err
	}
	return path, sectors, sync, nil
}

// refuseNegativeDurations makes every duration flag of these commands (and
// of their subcommands) refuse a negative value before the command runs:
// no duration hvft takes means anything below zero.
func refuseNegativeDurations(cmds []*cli.Command) {
	for _, cmd := range cmds {
		refuseNegativeDurations(cmd.Subcommands)
		cmd, before := cmd, cmd.Before
		cmd.Before = func(c *cli.Context) error {
			for _, f := range cmd.Flags {
				if d, ok := f.(*cli.DurationFlag); ok && c.Duration(d.Name) < 0 {
					return fmt.Errorf("--%s %v: a duration must not be negative", d.Name, c.Duration(d.Name))
				}
			}
			if before != nil {
				return before(c)
			}
			return nil
		}
	}
}
