package bench

import (
	"bytes"
	"context"
	"embed"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"hvft/guests"
)

// LinuxBench is one real program (built static) under hvft run --linux,
// with both epoch clocks, against the same program under qemu-x86_64
// (Debian's qemu-user, the peer people would use) and natively: each a
// process of its own, start-up included, timed in the same run.
type LinuxBench struct {
	Name string   `json:"name"`
	Args []string `json:"args"`
	// Skipped says why the comparison did not run (no gcc, no static
	// library, no qemu-x86_64, no hvft executable).
	Skipped       string  `json:"skipped,omitempty"`
	NativeMS      Stat    `json:"native_ms"`
	QemuMS        Stat    `json:"qemu_ms"`
	RunMS         Stat    `json:"run_ms"`
	AdaptiveMS    Stat    `json:"run_adaptive_ms"`
	RunOverQemu   float64 `json:"run_over_qemu"`
	AdaptOverQemu float64 `json:"run_adaptive_over_qemu"`
}

// linuxProgram is a program to compare: how to build it, its arguments and
// the file on its standard input.
type linuxProgram struct {
	name  string
	build func(ctx context.Context, dir string) (bin string, err error)
	args  func(dir string) []string
	stdin func(dir string) (string, error)
}

// linuxPrograms are a CoreMark-class workload (branchy), a bzip2-class one
// (Debian's busybox-static compressing text at -9) and a Lua-class one
// (a Lua script of tables, strings, closures and floats, run by Lua from
// Debian's static liblua5.4).
func (e *runner) linuxPrograms() []linuxProgram {
	quick := e.opt.Quick
	return []linuxProgram{
		{name: "branchy", build: buildBranchyLinux, args: func(string) []string {
			if quick {
				return []string{"64", "3000"}
			}
			return []string{"64", "30000"}
		}},
		{name: "bzip2", build: func(context.Context, string) (string, error) {
			if _, err := os.Stat("/bin/busybox"); err != nil {
				return "", fmt.Errorf("no /bin/busybox (make deps installs busybox-static)")
			}
			return "/bin/busybox", nil
		}, args: func(string) []string { return []string{"bzip2", "-9", "-c"} }, stdin: func(dir string) (string, error) {
			size := 4 << 20
			if quick {
				size = 512 << 10
			}
			return writeText(filepath.Join(dir, "bzip2-input.txt"), size)
		}},
		{name: "lua", build: buildLua, args: func(dir string) []string {
			n := "300000"
			if quick {
				n = "30000"
			}
			return []string{filepath.Join(dir, "lua", "bench.lua"), n}
		}},
	}
}

// writeText writes size bytes of deterministic, compressible text.
func writeText(path string, size int) (string, error) {
	var b bytes.Buffer
	x := uint64(0x9e3779b97f4a7c15)
	words := []string{"replica", "epoch", "primary", "backup", "hypervisor", "fault", "tolerant", "log", "answer", "boundary"}
	for b.Len() < size {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		fmt.Fprintf(&b, "%s %d ", words[x%uint64(len(words))], x%1000)
		if x%7 == 0 {
			b.WriteByte('\n')
		}
	}
	return path, os.WriteFile(path, b.Bytes()[:size], 0o644)
}

func (e *runner) linux(ctx context.Context) ([]LinuxBench, error) {
	var all []LinuxBench
	for _, p := range e.linuxPrograms() {
		b, err := e.linuxOne(ctx, p)
		if err != nil {
			return all, fmt.Errorf("linux %s: %w", p.name, err)
		}
		all = append(all, b)
	}
	return all, nil
}

func (e *runner) linuxOne(ctx context.Context, p linuxProgram) (LinuxBench, error) {
	args := p.args(e.opt.OutDir)
	out := LinuxBench{Name: p.name, Args: args}
	qemu, err := exec.LookPath("qemu-x86_64")
	switch {
	case e.opt.Executable == "":
		out.Skipped = "no hvft executable to run"
	case err != nil:
		out.Skipped = "qemu-x86_64 is not installed (make deps installs qemu-user)"
	}
	if out.Skipped != "" {
		return out, nil
	}
	prog, err := p.build(ctx, e.opt.OutDir)
	if err != nil {
		out.Skipped = err.Error()
		return out, nil
	}
	stdin := ""
	if p.stdin != nil {
		if stdin, err = p.stdin(e.opt.OutDir); err != nil {
			return out, err
		}
	}
	run := func(argv []string) ([]byte, error) {
		cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
		if stdin != "" {
			f, err := os.Open(stdin)
			if err != nil {
				return nil, err
			}
			defer f.Close()
			cmd.Stdin = f
		}
		cmd.WaitDelay = time.Second
		return cmd.Output()
	}
	want, err := run(append([]string{prog}, args...))
	if err != nil {
		return out, fmt.Errorf("natively: %w", err)
	}
	hvft := []string{e.opt.Executable, "--log-level", "error", "run", "--linux"}
	variants := []struct {
		label string
		argv  []string
		into  *Stat
	}{
		{"native", append([]string{prog}, args...), &out.NativeMS},
		{"qemu-x86_64", append([]string{qemu, prog}, args...), &out.QemuMS},
		{"hvft run --linux", append(append(append([]string{}, hvft...), prog, "--"), args...), &out.RunMS},
		{"hvft run --linux --epoch-clock adaptive", append(append(append([]string{}, hvft...), "--epoch-clock", "adaptive", prog, "--"), args...), &out.AdaptiveMS},
	}
	times := make([][]float64, len(variants))
	// Interleaved repetitions, so that a change of load hits every variant.
	for rep := 0; rep < e.opt.Reps; rep++ {
		for i, v := range variants {
			e.opt.Progress("linux %s: %s (%d/%d)", p.name, v.label, rep+1, e.opt.Reps)
			start := time.Now()
			got, err := run(v.argv)
			if err != nil {
				return out, fmt.Errorf("%s: %w", v.label, err)
			}
			times[i] = append(times[i], float64(time.Since(start).Microseconds())/1000)
			if !bytes.Equal(got, want) {
				return out, fmt.Errorf("%s printed %d bytes that differ from the native %d", v.label, len(got), len(want))
			}
		}
	}
	for i, v := range variants {
		*v.into = statOf(times[i])
	}
	out.RunOverQemu = out.RunMS.Median / out.QemuMS.Median
	out.AdaptOverQemu = out.AdaptiveMS.Median / out.QemuMS.Median
	return out, nil
}

//go:embed lua/luarun.c lua/bench.lua
var luaFiles embed.FS

// buildLua links a small Lua runner (lua/luarun.c) against Debian's static
// liblua5.4 (liblua5.4-dev), beside the benchmark script.
func buildLua(ctx context.Context, dir string) (string, error) {
	tree := filepath.Join(dir, "lua")
	if err := os.MkdirAll(tree, 0o755); err != nil {
		return "", err
	}
	for _, name := range []string{"luarun.c", "bench.lua"} {
		data, err := luaFiles.ReadFile("lua/" + name)
		if err != nil {
			return "", err
		}
		if err := os.WriteFile(filepath.Join(tree, name), data, 0o644); err != nil {
			return "", err
		}
	}
	bin := filepath.Join(tree, "luarun")
	cmd := exec.CommandContext(ctx, "gcc", "-O2", "-static", "-I/usr/include/lua5.4", "-o", bin, filepath.Join(tree, "luarun.c"), "-llua5.4", "-lm")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("gcc -static luarun.c -llua5.4 (needs liblua5.4-dev): %v: %s", err, out)
	}
	return bin, nil
}

// buildBranchyLinux compiles the embedded branchy sources into dir.
func buildBranchyLinux(ctx context.Context, dir string) (string, error) {
	srcs, err := guests.BranchyLinuxSources()
	if err != nil {
		return "", err
	}
	tree := filepath.Join(dir, "branchy-linux")
	for name, data := range srcs {
		p := filepath.Join(tree, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return "", err
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			return "", err
		}
	}
	bin := filepath.Join(tree, "branchy_linux")
	cmd := exec.CommandContext(ctx, "gcc", "-O2", "-static", "-o", bin, filepath.Join(tree, filepath.FromSlash(guests.BranchyLinuxMain)))
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("gcc -O2 -static branchy_linux.c (needs libc6-dev): %v: %s", err, out)
	}
	return bin, nil
}
