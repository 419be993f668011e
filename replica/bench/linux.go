package bench

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"hvft/guests"
)

// LinuxBench is the branchy benchmark built as a Linux program (gcc -O2
// -static) under hvft run --linux, with both epoch clocks, against the same
// program under qemu-x86_64 (Debian's qemu-user, the peer people would
// use) and natively: each a process of its own, start-up included, timed
// in the same run.
type LinuxBench struct {
	Args []string `json:"args"`
	// Skipped says why the comparison did not run (no gcc, no static libc,
	// no qemu-x86_64, no hvft executable).
	Skipped       string  `json:"skipped,omitempty"`
	NativeMS      Stat    `json:"native_ms"`
	QemuMS        Stat    `json:"qemu_ms"`
	RunMS         Stat    `json:"run_ms"`
	AdaptiveMS    Stat    `json:"run_adaptive_ms"`
	RunOverQemu   float64 `json:"run_over_qemu"`
	AdaptOverQemu float64 `json:"run_adaptive_over_qemu"`
}

func (e *runner) linux(ctx context.Context) (LinuxBench, error) {
	args := []string{"64", "30000"}
	if e.opt.Quick {
		args = []string{"64", "3000"}
	}
	out := LinuxBench{Args: args}
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
	prog, err := buildBranchyLinux(ctx, e.opt.OutDir)
	if err != nil {
		out.Skipped = err.Error()
		return out, nil
	}
	want, err := exec.CommandContext(ctx, prog, args...).Output()
	if err != nil {
		return out, fmt.Errorf("branchy natively: %w", err)
	}
	variants := []struct {
		label string
		argv  []string
		into  *Stat
	}{
		{"native", append([]string{prog}, args...), &out.NativeMS},
		{"qemu-x86_64", append([]string{qemu, prog}, args...), &out.QemuMS},
		{"hvft run --linux", append([]string{e.opt.Executable, "--log-level", "error", "run", "--linux", prog, "--"}, args...), &out.RunMS},
		{"hvft run --linux --epoch-clock adaptive", append([]string{e.opt.Executable, "--log-level", "error", "run", "--linux", "--epoch-clock", "adaptive", prog, "--"}, args...), &out.AdaptiveMS},
	}
	times := make([][]float64, len(variants))
	// Interleaved repetitions, so that a change of load hits every variant.
	for rep := 0; rep < e.opt.Reps; rep++ {
		for i, v := range variants {
			e.opt.Progress("linux branchy: %s (%d/%d)", v.label, rep+1, e.opt.Reps)
			cmd := exec.CommandContext(ctx, v.argv[0], v.argv[1:]...)
			var stdout bytes.Buffer
			cmd.Stdout = &stdout
			start := time.Now()
			if err := cmd.Run(); err != nil {
				return out, fmt.Errorf("%s: %w", v.label, err)
			}
			times[i] = append(times[i], float64(time.Since(start).Microseconds())/1000)
			if !bytes.Equal(stdout.Bytes(), want) {
				return out, fmt.Errorf("%s printed %q, natively %q", v.label, stdout.Bytes(), want)
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
