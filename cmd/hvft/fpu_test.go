package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// childBound bounds every child process of these tests; childWaitDelay
// bounds how long Wait waits for its output once it has exited or been
// killed, should something it started hold the pipes open.
const (
	childBound     = 2 * time.Minute
	childWaitDelay = 5 * time.Second
)

// runChild runs name with args under childBound and returns its standard
// output, standard error and exit status; only a failure to run it at all
// (or to finish within the bound) fails the test.
func runChild(t *testing.T, name string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), childBound)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.WaitDelay = childWaitDelay
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("%s %v did not finish within %v", name, args, childBound)
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		t.Fatalf("running %s %v: %v", name, args, err)
	}
	return out.String(), errb.String(), code
}

// buildStatic compiles testdata/linux/SRC.c with cc (gcc or musl-gcc),
// -static, into a fresh directory; libs go after the source.
func buildStatic(t *testing.T, cc, src string, flags, libs []string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), src+"-"+cc)
	args := append(append([]string{"-O2", "-static"}, flags...), "-o", bin, filepath.Join("..", "..", "testdata", "linux", src+".c"))
	_, stderr, code := runChild(t, cc, append(args, libs...)...)
	if code != 0 {
		t.Fatalf("building %s with %s: exit %d\n%s", src, cc, code, stderr)
	}
	return bin
}

// nativeAndHvft runs prog natively and under hvft run --linux with args,
// and fails the test unless both succeed with byte-identical output.
func nativeAndHvft(t *testing.T, what string, prog string, nativeArgs, hvftArgs []string) {
	t.Helper()
	want, stderr, code := runChild(t, prog, nativeArgs...)
	if code != 0 {
		t.Fatalf("%s natively: exit %d\n%s", what, code, stderr)
	}
	r := hvft(t, "", append([]string{"--log-level", "error", "run", "--linux", prog, "--"}, hvftArgs...)...)
	if r.code != 0 {
		t.Fatalf("%s under hvft: exit %d\n%s", what, r.code, r.stderr)
	}
	if r.stdout != want {
		t.Errorf("%s: output under hvft differs from the native run's%s", what, firstDifference(want, r.stdout))
	}
}

// firstDifference names the first line on which got differs from want.
func firstDifference(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	for i := 0; i < max(len(w), len(g)); i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			return fmt.Sprintf(" at line %d:\n native: %q\n   hvft: %q", i+1, wl, gl)
		}
	}
	return ""
}

var staticCCs = []string{"gcc", "musl-gcc"}

// TestFPUStateAtEntryMatchesNative: a static glibc and a static musl
// program read, first thing in main, the x87 control, status and tag
// words (FNSTCW, FNSTSW, FNSTENV, FXSAVE) and MXCSR (STMXCSR, FXSAVE) as
// a process of the host's Linux does: a new process's FNINIT state.
func TestFPUStateAtEntryMatchesNative(t *testing.T) {
	for _, cc := range staticCCs {
		prog := buildStatic(t, cc, "fpstate", nil, nil)
		nativeAndHvft(t, "fpstate ("+cc+")", prog, nil, nil)
	}
}

// TestFloatingPointMatchesNative: printf and strtod of a table of values,
// long double arithmetic and conversion, and division, rint, lrint, sqrt
// and fma under each of the four rounding modes print the same bytes under
// hvft as natively, with glibc and with musl (whose printf and strtod
// compute in long double: an x87 at single precision shows at once).
func TestFloatingPointMatchesNative(t *testing.T) {
	for _, cc := range staticCCs {
		prog := buildStatic(t, cc, "fpmath", []string{"-frounding-math"}, []string{"-lm"})
		nativeAndHvft(t, "fpmath ("+cc+")", prog, nil, nil)
	}
}

// TestSQLiteRealsMatchNative: SQLite (Debian's static libsqlite3, whose
// text-to-number and number-to-text conversions use long double) stores
// REAL values in a file, reads them back from it, and prints them, their
// round(avg(x),4), julianday('2000-01-01') and the stored literal 3.14159
// as under a native run, byte for byte.
func TestSQLiteRealsMatchNative(t *testing.T) {
	prog := sqlrowsProgram(t)
	nativeDB := filepath.Join(t.TempDir(), "native.db")
	hvftDB := filepath.Join(t.TempDir(), "hvft.db")
	nativeAndHvft(t, "sqlrows reals", prog, []string{"reals", nativeDB}, []string{"reals", hvftDB})
}
