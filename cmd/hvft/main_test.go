package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/urfave/cli/v2"

	"hvft/guests"
)

var hvftBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "hvft-cli")
	if err != nil {
		panic(err)
	}
	hvftBin = filepath.Join(dir, "hvft")
	if out, err := exec.Command("go", "build", "-o", hvftBin, ".").CombinedOutput(); err != nil {
		os.Stderr.Write(out)
		os.Exit(2)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type result struct {
	code           int
	stdout, stderr string
}

// hvft runs the built binary with a bound on its run time.
func hvft(t *testing.T, stdin string, args ...string) result {
	t.Helper()
	return runHvft(t, hvftBound, stdin, nil, args...)
}

// hvftBound bounds one hvft command of a test: a guard against a hang,
// far above what a command takes on a loaded machine.
const hvftBound = 2 * time.Minute

// runHvft runs the hvft binary with args within bound, or, with wrap,
// the command wrap names before it (wrap ends with the arguments its own
// command passes on: hvftBin and args follow).
func runHvft(t *testing.T, bound time.Duration, stdin string, wrap []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	argv := append(append(append([]string{}, wrap...), hvftBin), args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.WaitDelay = childWaitDelay // a child it started holding the pipes cannot hang the test
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	default:
		t.Fatalf("hvft %v: %v", args, err)
	}
	if ctx.Err() != nil {
		t.Fatalf("hvft %v did not finish within its bound", args)
	}
	if strings.Contains(r.stderr, "panic:") || strings.Contains(r.stderr, "goroutine ") {
		t.Fatalf("hvft %v panicked:\n%s", args, r.stderr)
	}
	return r
}

func writeFile(t *testing.T, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRunHelloWithArgsAndReport(t *testing.T) {
	report := filepath.Join(t.TempDir(), "r.json")
	r := hvft(t, "", "--log-level", "warn", "run", "--report", report, "hello", "--", "one", "two")
	if r.code != 0 || r.stdout != "hello from hvft\narg[0]=hello\narg[1]=one\narg[2]=two\n" {
		t.Fatalf("exit %d stdout %q stderr %s", r.code, r.stdout, r.stderr)
	}
	var rep map[string]any
	data, err := os.ReadFile(report)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"final_hash", "epochs", "blocks", "tlb_misses", "exit_code", "duration_ms"} {
		if _, ok := rep[k]; !ok {
			t.Errorf("report lacks %q: %s", k, data)
		}
	}
	if rep["exit_code"] != 0.0 || len(rep["final_hash"].(string)) != 32 {
		t.Errorf("report %s", data)
	}
}

func TestExitCodeIsTheGuests(t *testing.T) {
	// compute powers off with 2 when its buffer cannot fit in RAM.
	r := hvft(t, "", "--log-level", "warn", "run", "compute", "--", "64")
	if r.code != 2 {
		t.Fatalf("exit %d, want the guest's 2\n%s%s", r.code, r.stdout, r.stderr)
	}
}

func TestRdtscGuestSeesNoTSC(t *testing.T) {
	r := hvft(t, "", "--log-level", "warn", "run", "rdtsc")
	if r.code != 0 || !strings.Contains(r.stdout, "cpuid says no TSC") {
		t.Fatalf("exit %d stdout %q", r.code, r.stdout)
	}
}

// TestTinyEpochs: the shortest epochs still make progress and deliver
// every interrupt (the first version never finished with one-block epochs,
// and printed 118-443 ticks for 5 with two-block epochs).
func TestTinyEpochs(t *testing.T) {
	r := hvft(t, "", "--log-level", "warn", "run", "--epoch-blocks", "1", "hello", "--", "tiny")
	if r.code != 0 || !strings.Contains(r.stdout, "arg[1]=tiny") {
		t.Fatalf("one-block epochs: exit %d stdout %q stderr %s", r.code, r.stdout, r.stderr)
	}
	r = hvft(t, "", "--log-level", "warn", "run", "--epoch-blocks", "2", "ticker", "--", "5", "1000")
	if err := guests.CheckTicker(r.stdout, 5); r.code != 0 || err != nil {
		t.Fatalf("two-block epochs: exit %d, %v\n%s%s", r.code, err, r.stdout, r.stderr)
	}
}

func TestTickerDefault(t *testing.T) {
	r := hvft(t, "", "--log-format", "json", "run", "ticker", "--", "5", "2000")
	if r.code != 0 || strings.Count(r.stdout, "tick ") != 5 {
		t.Fatalf("exit %d stdout %q stderr %s", r.code, r.stdout, r.stderr)
	}
	first := strings.SplitN(r.stderr, "\n", 2)[0]
	var entry map[string]any
	if err := json.Unmarshal([]byte(first), &entry); err != nil || entry["tlb_seed"] == nil {
		t.Errorf("--log-format json first line %q: %v (want JSON with the TLB seed)", first, err)
	}
}

func TestBadInput(t *testing.T) {
	helloImg, _ := guests.Builtin("hello")
	outside := append([]byte(nil), helloImg...)
	phoff := int(outside[32]) | int(outside[33])<<8
	// p_paddr of the first program header: far beyond 16 MiB of RAM.
	copy(outside[phoff+24:], []byte{0, 0, 0, 0x40, 0, 0, 0, 0})
	fifo := filepath.Join(t.TempDir(), "fifo.elf")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"missing file", []string{"run", "/nonexistent/guest.elf"}, "no such file"},
		// Opening a FIFO blocks until a writer comes, and no signal ends
		// that wait: both are refused before they are read.
		{"guest is a FIFO", []string{"run", fifo}, "not a regular file"},
		{"replay log is a FIFO", []string{"replay", fifo}, "not a regular file"},
		{"guest is a directory", []string{"run", t.TempDir() + "/"}, "not a regular file"},
		{"unknown builtin", []string{"run", "nosuchguest"}, "neither a built-in"},
		{"truncated ELF", []string{"run", writeFile(t, "trunc.elf", helloImg[:200])}, "guest"},
		{"garbage ELF", []string{"run", writeFile(t, "garbage.elf", bytes.Repeat([]byte("junk"), 300))}, "not an ELF"},
		{"segment outside RAM", []string{"run", writeFile(t, "outside.elf", outside)}, "outside RAM"},
		{"jump to unmapped memory", []string{"run", "badjump"}, "fetch from unmapped memory at 0x40000000"},
		{"invalid opcode, no handler", []string{"run", "badop"}, "no usable IDT gate for vector 6"},
		{"never halts: max epochs", []string{"run", "--max-epochs", "20", "spin"}, "epoch budget"},
		{"never halts: timeout", []string{"run", "--timeout", "300ms", "spin"}, "timed out"},
		{"flag after guest", []string{"run", "hello", "--tlb-entries", "8"}, "before GUEST"},
		{"tiny TLB", []string{"run", "--tlb-entries", "1", "hello"}, "at least 4"},
		{"huge TLB", []string{"run", "--tlb-entries", "1000000000", "hello"}, "at most 65536"},
		{"bad page size", []string{"run", "--tlb-page", "3000", "hello"}, "power of two"},
		{"bad RAM size", []string{"run", "--ram", "lots", "hello"}, "--ram"},
		{"RAM too small for image", []string{"run", "--ram", "1MiB", "hello"}, "outside RAM"},
		{"bad policy", []string{"run", "--tlb-policy", "mru", "hello"}, "unknown TLB policy"},
		{"bad log level", []string{"--log-level", "loud", "run", "hello"}, "--log-level"},
		{"heartbeat not shorter than the timeout", []string{"primary", "--listen", "127.0.0.1:0", "--backup-wait", "0",
			"--heartbeat", "1s", "--failure-timeout", "300ms", "hello"}, "heartbeat shorter than the timeout"},
		{"zero failure timeout", []string{"backup", "--primary", "127.0.0.1:1", "--failure-timeout", "0s", "hello"}, "both must be positive"},
		{"demo heartbeat", []string{"demo", "--heartbeat", "2s", "hello"}, "heartbeat shorter than the timeout"},
		// Checked before the run, so that nothing it measures is lost.
		{"report into a missing directory", []string{"run", "--report", "/nonexistent/dir/r.json", "hello"}, "--report /nonexistent/dir/r.json"},
		{"replay report into a missing directory", []string{"replay", "--report", "/nonexistent/dir/r.json", "/nonexistent.log"}, "--report"},
		{"primary report into a missing directory", []string{"primary", "--listen", "127.0.0.1:0", "--report", "/nonexistent/dir/r.json", "hello"}, "--report"},
		{"listen without a port", []string{"primary", "--listen", "notanaddr", "hello"}, `--listen "notanaddr": want HOST:PORT`},
		{"primary with a bad port", []string{"backup", "--primary", "127.0.0.1:notaport", "hello"}, `the port "notaport" is not a number`},
		{"etcd endpoint with a bad port", []string{"primary", "--listen", "127.0.0.1:0", "--arbiter", "etcd://127.0.0.1:99999/run", "hello"}, `the port "99999" is not a number`},
		{"replay flag after the log", []string{"replay", "x.log", "--until-epoch", "3"}, "flags go before the arguments"},
		// Like a link in the clear, a pair across hosts without an
		// arbiter needs an explicit opt-in (192.0.2.1 is never bound).
		{"no arbiter across hosts", []string{"primary", "--listen", "192.0.2.1:7700", "--insecure", "hello"}, "no --arbiter for a pair across hosts"},
		{"no arbiter across hosts, backup", []string{"backup", "--primary", "192.0.2.1:7700", "--insecure", "hello"}, "--no-arbiter to accept that risk"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := hvft(t, "", append([]string{"--log-level", "error"}, c.args...)...)
			if c.name == "bad log level" {
				r = hvft(t, "", c.args...)
			}
			if r.code != exitFailure {
				t.Fatalf("exit %d, want %d\nstdout %s\nstderr %s", r.code, exitFailure, r.stdout, r.stderr)
			}
			if !strings.Contains(r.stderr, c.want) || !strings.HasPrefix(strings.TrimSpace(r.stderr[strings.LastIndex(strings.TrimRight(r.stderr, "\n"), "\n")+1:]), "hvft:") {
				t.Errorf("stderr does not end with an hvft: error naming %q:\n%s", c.want, r.stderr)
			}
		})
	}
}

func TestHelpExplains(t *testing.T) {
	r := hvft(t, "", "run", "--help")
	for _, want := range []string{"--tlb-entries", "--epoch-blocks", "--max-epochs", "--timeout", "--report", "built-in"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("run --help lacks %q", want)
		}
	}
	r = hvft(t, "", "guests")
	for _, g := range guests.List() {
		if !strings.Contains(r.stdout, g.Name) {
			t.Errorf("guests lacks %s", g.Name)
		}
	}
}

func TestParseSize(t *testing.T) {
	good := map[string]uint64{"4096": 4096, "64K": 64 << 10, "64KiB": 64 << 10, "16MiB": 16 << 20, "16m": 16 << 20, "1G": 1 << 30, "2 MB": 2 << 20}
	for s, want := range good {
		if got, err := parseSize(s); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", s, got, err, want)
		}
	}
	for _, s := range []string{"", "0", "-1", "12Q", "K", "99999999999999999999G"} {
		if _, err := parseSize(s); err == nil {
			t.Errorf("parseSize(%q) accepted", s)
		}
	}
}

// TestGuestMisbehaviourIsContained: a guest that writes outside RAM, one
// that storms the host with timer interrupts, and one that floods the
// console forever (alone and replicated) each end with a clear outcome,
// bounded in time by their own limits.
func TestGuestMisbehaviourIsContained(t *testing.T) {
	r := hvft(t, "", "--log-level", "error", "run", "misbehave", "--", "write")
	if r.code != exitFailure || !strings.Contains(r.stderr, "write to unmapped memory at 0x40000000") {
		t.Errorf("write outside RAM: exit %d %s", r.code, r.stderr)
	}
	r = hvft(t, "", "--log-level", "error", "run", "misbehave", "--", "storm", "500")
	if r.code != 0 || !strings.Contains(r.stdout, "storm of 500 interrupts survived") {
		t.Errorf("interrupt storm: exit %d %q %s", r.code, r.stdout, r.stderr)
	}
	r = hvft(t, "", "--log-level", "error", "run", "--max-epochs", "50", "misbehave", "--", "flood")
	if r.code != exitFailure || !strings.Contains(r.stderr, "epoch budget") || !strings.HasPrefix(r.stdout, "flood 0\n") {
		t.Errorf("console flood: exit %d, %d bytes out, %s", r.code, len(r.stdout), r.stderr)
	}
	addr := freeAddr(t)
	primary := startHvft(t, "--log-level", "error", "primary", "--listen", addr, "--max-epochs", "50", "misbehave", "--", "flood")
	b := hvft(t, "", "--log-level", "error", "backup", "--primary", addr, "--max-epochs", "50", "misbehave", "--", "flood")
	if code := primary.wait(t); code != exitFailure || !strings.Contains(primary.stderr.String(), "epoch budget") {
		t.Errorf("replicated flood, primary: exit %d %s", code, primary.stderr.String())
	}
	if b.code != exitFailure || b.stdout != "" {
		t.Errorf("replicated flood, backup: exit %d, %d bytes out, %s", b.code, len(b.stdout), b.stderr)
	}
}

// TestNegativeDurationsAreRefused: every duration flag of every command
// (found in the app itself, so a new one is covered too) refuses a
// negative value with an hvft: error naming the flag, before anything
// runs. The other arguments make each command quick should it run.
func TestNegativeDurationsAreRefused(t *testing.T) {
	quick := map[string][]string{
		"primary": {"--listen", "127.0.0.1:0", "--backup-wait", "0s"},
		"backup":  {"--primary", "127.0.0.1:1", "--connect-timeout", "1s"},
		"demo":    {"--kill-after", "never"},
	}
	n := 0
	for _, cmd := range newApp().Commands {
		for _, f := range cmd.Flags {
			d, ok := f.(*cli.DurationFlag)
			if !ok {
				continue
			}
			n++
			t.Run(cmd.Name+"--"+d.Name, func(t *testing.T) {
				args := append(append([]string{"--log-level", "error", cmd.Name}, quick[cmd.Name]...), "--"+d.Name, "-1s", "hello")
				r := hvft(t, "", args...)
				if r.code != exitFailure || !strings.HasPrefix(r.stderr, "hvft: --"+d.Name) || !strings.Contains(r.stderr, "negative") {
					t.Errorf("hvft %s: exit %d, want %d and an hvft: error refusing the negative --%s\nstdout %q\nstderr %s",
						strings.Join(args, " "), r.code, exitFailure, d.Name, r.stdout, r.stderr)
				}
			})
		}
	}
	if n < 8 {
		t.Errorf("found %d duration flags: the commands' flags were not seen", n)
	}
	// The demo's --kill-after takes a duration or an epoch count.
	if r := hvft(t, "", "demo", "--kill-after", "-1s", "hello"); r.code != exitFailure || !strings.HasPrefix(r.stderr, "hvft: --kill-after") {
		t.Errorf("demo --kill-after -1s: exit %d\n%s", r.code, r.stderr)
	}
}
