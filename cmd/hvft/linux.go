package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"

	"hvft/replica"
	"hvft/vm"
	"hvft/vm/guestelf"
	"hvft/vm/linux"
)

// loadLinux reads the Linux program named on the command line (--linux)
// and completes the machine configuration: argv, environment, the
// program's path and working directory as it sees them under --root.
func loadLinux(c *cli.Context, cfg vm.Config, name string, args []string) (replica.Machine, string, error) {
	if c.Args().Len() == 0 || c.Args().First() == "--" {
		return replica.Machine{}, "", fmt.Errorf("--linux needs the program: hvft %s --linux PROG [-- ARGS...]", c.Command.Name)
	}
	if c.String("disk") != "" {
		return replica.Machine{}, "", fmt.Errorf("--disk is for board guests: a Linux program reaches its files under --root")
	}
	typed := name // argv[0], as a shell would pass it
	name = programPath(name)
	data, err := os.ReadFile(name)
	if err != nil {
		return replica.Machine{}, "", fmt.Errorf("reading the program: %w", err)
	}
	prog, err := linux.ParseProgram(data)
	if err != nil {
		return replica.Machine{}, "", fmt.Errorf("program %s: %w", name, err)
	}
	root, err := filepath.Abs(c.String("root"))
	if err != nil {
		return replica.Machine{}, "", fmt.Errorf("--root: %w", err)
	}
	if st, err := os.Stat(root); err != nil || !st.IsDir() {
		return replica.Machine{}, "", fmt.Errorf("--root %s is not a directory", root)
	}
	env := c.StringSlice("env")
	for _, e := range env {
		if !strings.Contains(e, "=") || strings.HasPrefix(e, "=") {
			return replica.Machine{}, "", fmt.Errorf("--env %q: want NAME=VALUE", e)
		}
	}
	abs, err := filepath.Abs(name)
	if err != nil {
		return replica.Machine{}, "", err
	}
	cwd, err := os.Getwd()
	if err != nil {
		return replica.Machine{}, "", err
	}
	cfg.Args = append([]string{typed}, args...)
	cfg.Linux = &vm.LinuxSetup{Program: prog, Process: linux.Config{
		Args: cfg.Args, Env: env, Exe: underRoot(root, abs, abs), Cwd: underRoot(root, cwd, "/"),
		UID: uint32(os.Getuid()), GID: uint32(os.Getgid()),
	}}
	img := &guestelf.Image{Entry: prog.Entry, Digest: prog.Digest}
	m := replica.Machine{Image: img, Config: cfg, EpochBlocks: c.Uint64("epoch-blocks"), Root: root, ProgramPath: abs, JournalDir: c.String("journal-dir")}
	return m, name, nil
}

// underRoot is host path p as the program sees it (relative to root), or
// outside when p lies outside root.
func underRoot(root, p, outside string) string {
	rel, err := filepath.Rel(root, p)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return outside
	}
	return filepath.ToSlash(filepath.Join("/", rel))
}

// replayProgram loads the Linux program a log recorded: the file named,
// or the one the log names.
func replayProgram(name string, h *replica.LinuxHeader, digest string) (*linux.Program, *guestelf.Image, error) {
	if name == "" {
		name = h.Program
	}
	data, err := os.ReadFile(name)
	if err != nil {
		return nil, nil, fmt.Errorf("the log's Linux program: %w", err)
	}
	prog, err := linux.ParseProgram(data)
	if err != nil {
		return nil, nil, fmt.Errorf("program %s: %w", name, err)
	}
	if got := fmt.Sprintf("%x", prog.Digest); got != digest {
		return nil, nil, fmt.Errorf("program %s has digest %s, but the log was recorded with %s", name, got, digest)
	}
	return prog, &guestelf.Image{Entry: prog.Entry, Digest: prog.Digest}, nil
}

// demoLinuxArgs checks the demo's Linux flags and returns the ones its
// replicas take (nil for a board guest).
func demoLinuxArgs(c *cli.Context, name string) ([]string, error) {
	if !c.Bool("linux") {
		if c.String("stdin") != "" || len(c.StringSlice("env")) > 0 {
			return nil, fmt.Errorf("--stdin and --env are for a Linux program (--linux)")
		}
		return nil, nil
	}
	if c.String("disk") != "" {
		return nil, fmt.Errorf("--disk is for board guests: a Linux program reaches its files under --root")
	}
	if c.Args().Len() == 0 || c.Args().First() == "--" {
		return nil, fmt.Errorf("--linux needs the program: hvft demo --linux PROG [-- ARGS...]")
	}
	data, err := os.ReadFile(programPath(name))
	if err != nil {
		return nil, fmt.Errorf("reading the program: %w", err)
	}
	if _, err := linux.ParseProgram(data); err != nil {
		return nil, fmt.Errorf("program %s: %w", name, err)
	}
	args := []string{"--linux", "--root", c.String("root")}
	if d := c.String("journal-dir"); d != "" {
		args = append(args, "--journal-dir", d)
	}
	for _, e := range c.StringSlice("env") {
		args = append(args, "--env", e)
	}
	return args, nil
}

// programPath finds a program named without a slash on $PATH, as a shell
// would (busybox, not only /bin/busybox); any other name is a path.
func programPath(name string) string {
	if strings.Contains(name, "/") {
		return name
	}
	if _, err := os.Stat(name); err == nil {
		return name
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	return name
}
