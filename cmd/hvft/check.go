package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"
)

// checkReportPath refuses, before a run starts, a --report that the run
// could not write at its end: everything it measured would be lost.
func checkReportPath(c *cli.Context) error {
	path := c.String("report")
	if path == "" {
		return nil
	}
	dir := filepath.Dir(path)
	st, err := os.Stat(dir)
	switch {
	case err != nil:
		return fmt.Errorf("--report %s: its directory: %w", path, err)
	case !st.IsDir():
		return fmt.Errorf("--report %s: %s is not a directory", path, dir)
	case syscall.Access(dir, 2 /* W_OK */) != nil:
		return fmt.Errorf("--report %s: the directory %s is not writable", path, dir)
	}
	return nil
}

// checkHostPort refuses an address that is not HOST:PORT with a port
// number (or, where allowed, fd:N), naming the flag.
func checkHostPort(flag, addr string) error {
	if addr == "" || strings.HasPrefix(addr, "fd:") {
		return nil
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("--%s %q: want HOST:PORT, as in 127.0.0.1:7700 (%v)", flag, addr, err)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("--%s %q: the port %q is not a number from 0 to 65535", flag, addr, port)
	}
	return nil
}

// trailingFlag takes a flag given after the positional arguments, where
// the command-line parser no longer sees flags (hvft replay LOG --then
// NEW): it returns the positional arguments without it and its value. Any
// other flag-like argument is refused with a message saying where flags go.
func trailingFlag(args []string, name string) (rest []string, value string, err error) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--"+name || a == "-"+name:
			if i+1 >= len(args) {
				return nil, "", fmt.Errorf("--%s needs a value", name)
			}
			value = args[i+1]
			i++
		case strings.HasPrefix(a, "--"+name+"=") || strings.HasPrefix(a, "-"+name+"="):
			value = a[strings.Index(a, "=")+1:]
		case strings.HasPrefix(a, "-") && a != "-":
			return nil, "", fmt.Errorf("%s: flags go before the arguments (move it before them)", a)
		default:
			rest = append(rest, a)
		}
	}
	return rest, value, nil
}

// argAt is args[i], or "" past its end.
func argAt(args []string, i int) string {
	if i < len(args) {
		return args[i]
	}
	return ""
}
