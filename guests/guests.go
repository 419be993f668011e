// Package guests holds the built-in guest images (built from src/ with the
// SDK in sdk/ and include/, by the Makefile in this folder) and resolves a
// guest named on the command line to its bytes.
//
// The images live in images/ rather than testdata/ because Go's embed
// cannot reach a folder outside its package's, and the project keeps a
// single copy of each binary.
package guests

import (
	"embed"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"
	"syscall"
)

//go:embed images/*.elf images/TOOLCHAIN
var images embed.FS

// MaxImageSize bounds a guest image file read from disk.
const MaxImageSize = 256 << 20

// Default is the guest `hvft run` boots when none is named.
const Default = "ticker"

// descriptions says what each built-in guest is for, for `hvft guests`.
var descriptions = map[string]string{
	"hello":     "prints a greeting and its arguments",
	"compute":   "CPU-bound SHA-256 over MiB of generated data [MiB reps]",
	"ticker":    "timer IRQs; each tick reads clock and random and prints a checksummed line [ticks period-us]",
	"tlbstress": "touches many scattered pages and verifies them [MiB passes]",
	"faults":    "divides by zero and executes ud2, handling both",
	"int1":      "executes INT1 (f1): each must arrive as a #DB trap [count]",
	"rdtsc":     "uses RDTSC although CPUID says no TSC (diverges when replicated)",
	"spin":      "never halts, never powers off",
	"badjump":   "jumps outside RAM",
	"badop":     "executes ud2 with no usable IDT gate",
	"diskkv":    "key-value log on the disk (needs --disk) [run|verify puts seed keys]",
	"diskbad":   "issues bad disk commands; each must fail cleanly (needs --disk)",
	"ramwriter": "writes RAM without pause (state transfer under load) [MiB passes]",
	"misbehave": "does what guests should not: write, storm or flood [mode]",
	"smc":       "self-modifying code: patches stubs in its own page, far away and the next instruction [same|other|next|all iterations]",
	"dmacode":   "DMA-reads code over code that has run, then calls it (needs --disk) [loads blobs]",
	"nestexc":   "thousands of #DE/#UD/#BP, nested in handlers and IRQs, timer running; none may arrive as #DF [iterations period-us]",
	"stishadow": "no IRQ inside the STI shadow: sti;insn;cli windows and sti;hlt, short timer period [iterations hlts period-us]",
	"cpustate":  "MSRs, swapgs, debug, x87 and SSE state read back and rewritten every iteration [iterations every | ticks n period-us every]",
	"rdtscram":  "stores RDTSC in RAM only, then spins: replicas differ in RAM alone [spins]",
	"branchy":   "CoreMark-class benchmark of short blocks: lists, state machine, CRCs, matrices [size iterations seed]",
	"envstop":   "OUT, IN and CPUID followed in their block by a load, a store, a ret or a stray f4: nothing may run twice [iterations]",
	"smcdata":   "patches code beside a counter it bumps, on one page; no call may run stale code [iterations]",
	"dmamask":   "DMA over a routine a spin keeps calling, its interrupt masked; it must land (needs --disk) [spins]",
	"printer":   "prints numbered lines through printf [lines]",
}

// Guest is one built-in image.
type Guest struct {
	Name        string
	Description string
	Size        int
}

// List returns the built-in guests, sorted by name.
func List() []Guest {
	entries, _ := fs.ReadDir(images, "images")
	var out []Guest
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".elf")
		if !ok {
			continue
		}
		info, _ := e.Info()
		out = append(out, Guest{Name: name, Description: descriptions[name], Size: int(info.Size())})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Builtin returns a built-in image by name.
func Builtin(name string) ([]byte, bool) {
	if strings.ContainsAny(name, "/\\") {
		return nil, false
	}
	data, err := images.ReadFile(path.Join("images", name+".elf"))
	return data, err == nil
}

// Toolchain is the compiler and linker the built-in images were built with.
func Toolchain() string {
	data, _ := images.ReadFile("images/TOOLCHAIN")
	return string(data)
}

// Load returns the bytes of a guest named either as a built-in or as a
// file path (a name containing a slash or ending in .elf is always a path),
// and a label for logs.
func Load(nameOrPath string) ([]byte, string, error) {
	if !strings.ContainsAny(nameOrPath, "/\\") && !strings.HasSuffix(nameOrPath, ".elf") {
		if data, ok := Builtin(nameOrPath); ok {
			return data, nameOrPath, nil
		}
		if _, err := os.Stat(nameOrPath); err != nil {
			var names []string
			for _, g := range List() {
				names = append(names, g.Name)
			}
			return nil, "", fmt.Errorf("guest %q is neither a built-in (%s) nor a file", nameOrPath, strings.Join(names, ", "))
		}
	}
	// Non-blocking, so that a FIFO or a device is refused instead of
	// blocking the open for ever (no signal ends that wait).
	f, err := os.OpenFile(nameOrPath, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, "", fmt.Errorf("reading guest image: %w", err)
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil {
		return nil, "", fmt.Errorf("reading guest image: %w", err)
	} else if !st.Mode().IsRegular() {
		return nil, "", fmt.Errorf("guest image %s is not a regular file", nameOrPath)
	}
	// Read one byte past the bound so that an oversized file is reported,
	// not silently cut.
	data, err := io.ReadAll(io.LimitReader(f, MaxImageSize+1))
	if err != nil {
		return nil, "", fmt.Errorf("reading guest image %s: %w", nameOrPath, err)
	}
	if len(data) > MaxImageSize {
		return nil, "", fmt.Errorf("guest image %s is larger than %d bytes", nameOrPath, MaxImageSize)
	}
	return data, nameOrPath, nil
}

//go:embed linux/branchy_linux.c src/branchy_work.h
var linuxSources embed.FS

// BranchyLinuxMain is the path, among BranchyLinuxSources, of the branchy
// benchmark built as a Linux program.
const BranchyLinuxMain = "linux/branchy_linux.c"

// BranchyLinuxSources returns the files of the branchy benchmark built as
// a Linux program (gcc -O2 -static linux/branchy_linux.c), by relative
// path: what hvft bench compares with qemu-user.
func BranchyLinuxSources() (map[string][]byte, error) {
	out := map[string][]byte{}
	for _, n := range []string{BranchyLinuxMain, "src/branchy_work.h"} {
		b, err := linuxSources.ReadFile(n)
		if err != nil {
			return nil, err
		}
		out[n] = b
	}
	return out, nil
}
