package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// busybox is Debian's busybox-static (make deps installs it): a
// glibc-static program nobody here wrote.
const busybox = "/bin/busybox"

func needBusybox(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(busybox); err != nil {
		t.Fatalf("%s is missing: install busybox-static (make deps does)", busybox)
	}
}

// bigInput writes a few MB of text, the same every run.
func bigInput(t *testing.T) string {
	t.Helper()
	rng := rand.New(rand.NewPCG(7, 7))
	words := []string{"alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta"}
	var b bytes.Buffer
	for i := 0; b.Len() < 3<<20; i++ {
		fmt.Fprintf(&b, "%d %s %s %d\n", rng.IntN(100000), words[rng.IntN(len(words))], words[rng.IntN(len(words))], i)
	}
	return writeFile(t, "big.txt", b.Bytes())
}

func native(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	cmd := exec.Command(busybox, args...)
	if stdin != "" {
		f, err := os.Open(stdin)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		cmd.Stdin = f
	}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("native busybox %v: %v", args, err)
	}
	return string(out)
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestBusyboxAppletsMatchNative: Debian's busybox applets under hvft run
// --linux, over a few MB from a file and from standard input, write what
// they write natively, byte for byte.
func TestBusyboxAppletsMatchNative(t *testing.T) {
	needBusybox(t)
	in := bigInput(t)
	applets := [][]string{
		{"awk", "{ s += $1; n[$2]++ } END { print s; for (k in n) print k, n[k] }"},
		{"sed", "-e", "s/a/X/g", "-e", "/theta/d"},
		{"sort"},
		{"sort", "-k2,2", "-k1,1n"},
		{"uniq", "-c"},
		{"sha256sum"},
		{"wc"},
		{"od", "-x"},
		{"cut", "-d", " ", "-f", "2,3"},
		{"tr", "a-z", "A-Z"},
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 2)
	for _, a := range applets {
		for _, fromFile := range []bool{true, false} {
			a, fromFile := a, fromFile
			wg.Add(1)
			go func() {
				defer wg.Done()
				sem <- struct{}{}
				defer func() { <-sem }()
				args, stdin, label := a, in, "stdin"
				if fromFile {
					args, stdin, label = append(append([]string{}, a...), in), "", "file"
				}
				want := native(t, stdin, args...)
				out := filepath.Join(t.TempDir(), "out")
				cmd := exec.Command(hvftBin, append([]string{"--log-level", "error", "run", "--linux", busybox, "--"}, args...)...)
				if stdin != "" {
					f, err := os.Open(stdin)
					if err != nil {
						t.Error(err)
						return
					}
					defer f.Close()
					cmd.Stdin = f
				}
				o, err := os.Create(out)
				if err != nil {
					t.Error(err)
					return
				}
				cmd.Stdout = o
				var stderr bytes.Buffer
				cmd.Stderr = &stderr
				err = cmd.Run()
				o.Close()
				if err != nil {
					t.Errorf("%s %v (%s): %v\n%s", busybox, a, label, err, stderr.String())
					return
				}
				if got := readFile(t, out); got != want {
					t.Errorf("%v (%s): %d bytes differ from the native %d", a, label, len(got), len(want))
				}
			}()
		}
	}
	wg.Wait()
}

// TestProgramFoundOnPath: a program named without a slash is looked up
// on $PATH, as a shell would, and keeps the name it was given as argv[0].
// TestSyscallStopsRunNothingTwice: testdata/linux/sysstop.c follows a
// system call, in its block, with a load, a store or a ret; under the
// adaptive clock quiet epochs end at such calls. Under both clocks its
// counts must be the native ones.
func TestSyscallStopsRunNothingTwice(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "sysstop")
	if out, err := exec.Command("gcc", "-O2", "-static", "-o", bin, filepath.Join("..", "..", "testdata", "linux", "sysstop.c")).CombinedOutput(); err != nil {
		t.Fatalf("building sysstop: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	native, err := exec.CommandContext(ctx, bin, "20000").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, clock := range []string{"always", "adaptive"} {
		r := hvft(t, "", "--log-level", "error", "run", "--linux", "--epoch-clock", clock, bin, "--", "20000")
		if r.code != 0 || r.stdout != string(native) {
			t.Fatalf("%s clock: exit %d, output %q, native %q\n%s", clock, r.code, r.stdout, native, r.stderr)
		}
	}
}

// TestDefaultTLBByKind: a Linux program's modelled TLB defaults to 1,024
// entries, a board guest's to 32, and --tlb-entries overrides either.
func TestDefaultTLBByKind(t *testing.T) {
	needBusybox(t)
	dir := t.TempDir()
	for _, c := range []struct {
		args []string
		want int
	}{
		{[]string{"--linux", busybox, "--", "true"}, 1024},
		{[]string{"hello"}, 32},
		{[]string{"--linux", "--tlb-entries", "8", busybox, "--", "true"}, 8},
		{[]string{"--tlb-entries", "64", "hello"}, 64},
	} {
		report := filepath.Join(dir, "r.json")
		r := hvft(t, "", append([]string{"--log-level", "error", "run", "--report", report}, c.args...)...)
		if r.code != 0 {
			t.Fatalf("%v: exit %d\n%s", c.args, r.code, r.stderr)
		}
		var rep struct {
			Entries int `json:"tlb_entries"`
		}
		data, _ := os.ReadFile(report)
		if err := json.Unmarshal(data, &rep); err != nil || rep.Entries != c.want {
			t.Fatalf("%v: report %s (%v), want %d entries", c.args, data, err, c.want)
		}
	}
}

func TestProgramFoundOnPath(t *testing.T) {
	needBusybox(t)
	r := hvft(t, "hello\n", "--log-level", "error", "run", "--linux", filepath.Base(busybox), "--", "sh", "-c", "echo $0; read x; echo $x")
	if r.code != 0 || r.stdout != "sh\nhello\n" {
		t.Fatalf("exit %d, output %q\n%s", r.code, r.stdout, r.stderr)
	}
}

// TestGzipPipeline: gzip -c | gzip -dc, each under hvft, round-trips the
// input, and the compressed stream is the native one.
func TestGzipPipeline(t *testing.T) {
	needBusybox(t)
	in := bigInput(t)
	gz := filepath.Join(t.TempDir(), "in.gz")
	r := hvft(t, "", "--log-level", "error", "run", "--linux", busybox, "--", "gzip", "-c", in)
	if r.code != 0 {
		t.Fatalf("gzip: exit %d\n%s", r.code, r.stderr)
	}
	if r.stdout != native(t, "", "gzip", "-c", in) {
		t.Fatal("gzip's output differs from the native one")
	}
	os.WriteFile(gz, []byte(r.stdout), 0o644)
	r = hvft(t, "", "--log-level", "error", "run", "--linux", busybox, "--", "gzip", "-dc", gz)
	if r.code != 0 || r.stdout != readFile(t, in) {
		t.Fatalf("gzip -dc: exit %d, %d bytes (want %d)\n%s", r.code, len(r.stdout), len(readFile(t, in)), r.stderr)
	}
}

// TestClockAndRandomReplay: date and awk's srand/rand read the clock and
// randomness from the environment; the recorded run replays to the same
// hashes, and the output is what a replay reproduces.
func TestClockAndRandomReplay(t *testing.T) {
	needBusybox(t)
	for _, args := range [][]string{{"date"}, {"awk", "BEGIN { srand(); print rand(), rand() }"}} {
		log := filepath.Join(t.TempDir(), "run.log")
		rep := filepath.Join(t.TempDir(), "replay.json")
		r := hvft(t, "", append([]string{"--log-level", "error", "run", "--linux", "--record", log, busybox, "--"}, args...)...)
		if r.code != 0 || strings.TrimSpace(r.stdout) == "" {
			t.Fatalf("%v: exit %d, output %q\n%s", args, r.code, r.stdout, r.stderr)
		}
		if args[0] == "date" && !strings.Contains(r.stdout, strconv.Itoa(time.Now().Year())) {
			t.Fatalf("date printed %q", r.stdout)
		}
		p := hvft(t, "", "replay", "--tlb-entries", "4", "--tlb-policy", "fifo", "--report", rep, log)
		if p.code != 0 {
			t.Fatalf("replay of %v: exit %d\n%s", args, p.code, p.stderr)
		}
		var res struct {
			Epochs  uint64 `json:"epochs"`
			Matched uint64 `json:"hashes_matched"`
		}
		json.Unmarshal([]byte(readFile(t, rep)), &res)
		if res.Epochs == 0 || res.Matched != res.Epochs {
			t.Fatalf("replay of %v matched %d of %d hashes", args, res.Matched, res.Epochs)
		}
	}
}

// TestUnsupportedProgramsFailClearly: what the personality cannot run is
// refused before it runs, with a message that says why.
func TestUnsupportedProgramsFailClearly(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "p.c")
	os.WriteFile(src, []byte("int main(void){return 0;}\n"), 0o644)
	dyn := filepath.Join(dir, "dyn")
	if out, err := exec.Command("gcc", "-o", dyn, src).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	elf32 := writeFile(t, "elf32", append([]byte("\x7fELF\x01\x01\x01"), make([]byte, 60)...))
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"run", "--linux", dyn}, "dynamic executables are not supported: link with -static"},
		{[]string{"run", "--linux", elf32}, "32-bit"},
		{[]string{"run", "--linux"}, "--linux needs the program"},
		{[]string{"run", "--linux", filepath.Join(dir, "missing")}, "no such file"},
		{[]string{"run", "--linux", "no-such-program-on-path"}, "no such file"},
		{[]string{"run", "--linux", "--root", filepath.Join(dir, "nowhere"), busybox}, "not a directory"},
		{[]string{"run", "--linux", "--env", "NOEQUALS", busybox}, "want NAME=VALUE"},
		{[]string{"demo", "--linux", "--stdin", filepath.Join(dir, "missing"), busybox, "--", "true"}, "--stdin"},
	} {
		r := hvft(t, "", tc.args...)
		if r.code == 0 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("hvft %v: exit %d, stderr %q; want a failure saying %q", tc.args, r.code, r.stderr, tc.want)
		}
	}
}

// TestLinuxDemoSurvivesPrimaryKill: busybox sort reading a file on
// standard input, replicated, its primary SIGKILLed at an observed epoch:
// the merged output is the native one, each byte once; the backup, given
// the same input, skipped what the old primary had read.
func TestLinuxDemoSurvivesPrimaryKill(t *testing.T) {
	needBusybox(t)
	in := bigInput(t)
	want := native(t, in, "sort", "-r")
	rng := rand.New(rand.NewPCG(testSeed(t), 3))
	for i := 0; i < 2; i++ {
		killAt := 5 + rng.IntN(60)
		report := filepath.Join(t.TempDir(), "demo.json")
		r := hvft(t, "", "--log-level", "warn", "demo", "--linux", "--stdin", in, "--kill-after", strconv.Itoa(killAt), "--report", report, busybox, "--", "sort", "-r")
		if r.code != 0 {
			t.Fatalf("demo: exit %d\n%s", r.code, r.stderr)
		}
		var rep demoReport
		json.Unmarshal([]byte(readFile(t, report)), &rep)
		if !rep.Killed || !rep.Backup.BecamePrimary {
			t.Fatalf("the kill after epoch %d did not strike a live primary: %s", killAt, readFile(t, report))
		}
		if r.stdout != want {
			t.Fatalf("kill after epoch %d: %d bytes of output, want the native %d", killAt, len(r.stdout), len(want))
		}
	}
}

// testSeed is HVFT_SEED when set, else drawn from the clock; it is logged
// so that a failure can be rerun.
func testSeed(t *testing.T) uint64 {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("HVFT_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("HVFT_SEED %q: %v", s, err)
		}
		seed = v
	}
	t.Logf("seed %d (HVFT_SEED=%d reruns it)", seed, seed)
	return seed
}

// sqlrowsProgram builds testdata/linux/sqlrows.c against Debian's static
// libsqlite3 (make deps installs libsqlite3-dev).
func sqlrowsProgram(t *testing.T) string {
	t.Helper()
	return buildStatic(t, "gcc", "sqlrows", nil, []string{"-lsqlite3", "-lm"})
}

// TestSQLiteSurvivesPrimaryKills: a program of our own linked with
// Debian's libsqlite3.a inserts rows in transactions, replicated, and its
// primary is SIGKILLed at a random epoch of the run: standard output
// holds each committed row once, and the database passes integrity_check
// and holds every row whose commit was printed. HVFT_LINUX_TRIALS sets the
// number of trials (make chaos runs 50).
func TestSQLiteSurvivesPrimaryKills(t *testing.T) {
	prog := sqlrowsProgram(t)
	trials := linuxTrials(t, 6)
	const rows = 400
	// How many epochs an unkilled replicated run lasts bounds the kills.
	probe := filepath.Join(t.TempDir(), "probe.db")
	rp := filepath.Join(t.TempDir(), "probe.json")
	r := hvft(t, "", "--log-level", "warn", "demo", "--linux", "--kill-after", "never", "--epoch-blocks", "20000", "--report", rp, prog, "--", "insert", probe, strconv.Itoa(rows))
	if r.code != 0 {
		t.Fatalf("unkilled run: exit %d\n%s", r.code, r.stderr)
	}
	var base struct {
		Backup struct {
			Epochs uint64 `json:"epochs"`
		} `json:"backup"`
	}
	json.Unmarshal([]byte(readFile(t, rp)), &base)
	epochs := base.Backup.Epochs
	if epochs < 10 {
		t.Fatalf("the unkilled run lasted %d epochs: too few to kill inside", epochs)
	}
	rng := rand.New(rand.NewPCG(testSeed(t), 5))
	struck := 0
	for i := 0; i < trials; i++ {
		killAt := 2 + rng.Uint64N(epochs-4)
		db := filepath.Join(t.TempDir(), "rows.db")
		report := filepath.Join(t.TempDir(), "demo.json")
		journal := t.TempDir()
		r := hvft(t, "", "--log-level", "warn", "demo", "--linux", "--journal-dir", journal, "--kill-after", strconv.FormatUint(killAt, 10), "--epoch-blocks", "20000",
			"--report", report, prog, "--", "insert", db, strconv.Itoa(rows))
		if r.code != 0 {
			t.Fatalf("trial %d (kill after epoch %d): exit %d\n%s", i, killAt, r.code, r.stderr)
		}
		var rep demoReport
		json.Unmarshal([]byte(readFile(t, report)), &rep)
		if rep.Killed && rep.Backup.BecamePrimary {
			struck++
		}
		var want strings.Builder
		for id := 1; id <= rows; id++ {
			fmt.Fprintf(&want, "committed %d\n", id)
		}
		if r.stdout != want.String() {
			t.Fatalf("trial %d (kill after epoch %d): standard output is not each commit once:\n%s", i, killAt, r.stdout)
		}
		out, err := exec.Command(prog, "verify", db).Output()
		if err != nil {
			t.Fatalf("trial %d: verify: %v", i, err)
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if lines[0] != "integrity ok" || lines[1] != "rows "+strconv.Itoa(rows) {
			t.Fatalf("trial %d (kill after epoch %d): the database says %q", i, killAt, lines[:2])
		}
		if left, _ := filepath.Glob(filepath.Join(journal, ".hvft-journal-*")); len(left) > 0 {
			t.Fatalf("trial %d: the journal outlived the run: %v", i, left)
		}
	}
	if struck == 0 {
		t.Fatalf("no kill struck a live primary in %d trials", trials)
	}
	t.Logf("%d of %d kills struck a live primary (a run over before its kill epoch is not counted)", struck, trials)
}

// probeProgram builds testdata/linux/probe.c.
func probeProgram(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "probe")
	out, err := exec.Command("gcc", "-O2", "-static", "-o", bin, filepath.Join("..", "..", "testdata", "linux", "probe.c")).CombinedOutput()
	if err != nil {
		t.Fatalf("building probe: %v\n%s", err, out)
	}
	return bin
}

// TestLinuxPairWithDifferentTLBs: a Linux program replicated between a
// primary and a backup whose TLBs differ in size, policy and seed: the
// backup compares the primary's hash at every epoch and finds it equal.
func TestLinuxPairWithDifferentTLBs(t *testing.T) {
	needBusybox(t)
	big := readFile(t, bigInput(t))
	in := writeFile(t, "small.txt", []byte(big[:300<<10]))
	addr := freeAddr(t)
	dir := t.TempDir()
	out, prep, brep := filepath.Join(dir, "out"), filepath.Join(dir, "p.json"), filepath.Join(dir, "b.json")
	p := startHvft(t, "--log-level", "warn", "primary", "--listen", addr, "--console-out", out, "--report", prep, "--failure-timeout", "5s",
		"--tlb-entries", "64", "--tlb-policy", "random", "--tlb-seed", "11", "--epoch-blocks", "20000", "--linux", busybox, "--", "sort", in)
	b := startHvft(t, "--log-level", "warn", "backup", "--primary", addr, "--console-out", out, "--report", brep, "--failure-timeout", "5s",
		"--tlb-entries", "16", "--tlb-page", "16KiB", "--tlb-policy", "lru", "--epoch-blocks", "20000", "--linux", busybox, "--", "sort", in)
	if c := p.wait(t); c != 0 {
		t.Fatalf("primary exit %d\n%s", c, p.stderr.String())
	}
	if c := b.wait(t); c != 0 {
		t.Fatalf("backup exit %d\n%s", c, b.stderr.String())
	}
	var pr, br struct {
		Epochs         uint64 `json:"epochs"`
		FinalHash      string `json:"final_hash"`
		HashesCompared uint64 `json:"hashes_compared"`
	}
	json.Unmarshal([]byte(readFile(t, prep)), &pr)
	json.Unmarshal([]byte(readFile(t, brep)), &br)
	if pr.Epochs < 10 || br.HashesCompared != pr.Epochs || br.FinalHash != pr.FinalHash {
		t.Fatalf("primary %+v, backup %+v: want every epoch's hash compared and equal", pr, br)
	}
	if readFile(t, out) != native(t, "", "sort", in) {
		t.Fatal("the replicated output differs from the native one")
	}
}

// TestRDTSCProgramFailsOver: a program that reads the TSC in a loop and
// prints it, replicated, its primary killed mid-run: the output is whole,
// each value once, and never goes back across the takeover.
func TestRDTSCProgramFailsOver(t *testing.T) {
	prog := probeProgram(t)
	rng := rand.New(rand.NewPCG(testSeed(t), 9))
	killAt := 3 + rng.IntN(20)
	report := filepath.Join(t.TempDir(), "demo.json")
	r := hvft(t, "", "--log-level", "warn", "demo", "--linux", "--epoch-blocks", "5000", "--kill-after", strconv.Itoa(killAt), "--report", report, prog, "--", "tsc", "400")
	if r.code != 0 {
		t.Fatalf("demo: exit %d\n%s", r.code, r.stderr)
	}
	var rep demoReport
	json.Unmarshal([]byte(readFile(t, report)), &rep)
	if !rep.Killed || !rep.Backup.BecamePrimary {
		t.Fatalf("the kill after epoch %d did not strike a live primary: %s", killAt, readFile(t, report))
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 401 || lines[400] != "monotonic yes rdtscp-later yes" {
		t.Fatalf("kill after epoch %d: %d lines, last %q", killAt, len(lines), lines[len(lines)-1])
	}
	var prev uint64
	for i, l := range lines[:400] {
		v, err := strconv.ParseUint(strings.TrimPrefix(l, "tsc "), 10, 64)
		if err != nil || v <= prev {
			t.Fatalf("line %d %q after %d: not a later TSC value", i, l, prev)
		}
		prev = v
	}
}

// TestLinuxRejoinThreeKills: the SQLite program, three primaries killed in
// turn, a new backup joining each survivor by state transfer (the process,
// its page table and its pages travel with RAM): each commit is printed
// once and the database holds every row.
func TestLinuxRejoinThreeKills(t *testing.T) {
	prog := sqlrowsProgram(t)
	// Long enough that three kills and two joins of 256 MiB fit inside
	// the run on a loaded machine (a join's pre-copy takes wall time while
	// the epochs go on).
	const rows = 6000
	db := filepath.Join(t.TempDir(), "rows.db")
	report := filepath.Join(t.TempDir(), "demo.json")
	r := hvft(t, "", "--log-level", "warn", "demo", "--linux", "--journal-dir", t.TempDir(), "--rejoin", "--kills", "3", "--kill-after", "40", "--epoch-blocks", "20000",
		"--report", report, prog, "--", "insert", db, strconv.Itoa(rows))
	if r.code != 0 {
		t.Fatalf("demo: exit %d\n%s", r.code, r.stderr)
	}
	var rep struct {
		Kills []struct {
			Survivor string `json:"survivor"`
		} `json:"kills"`
	}
	json.Unmarshal([]byte(readFile(t, report)), &rep)
	if len(rep.Kills) != 3 {
		t.Fatalf("%d kills struck, want 3 (the run may have ended first): %s", len(rep.Kills), readFile(t, report))
	}
	var want strings.Builder
	for id := 1; id <= rows; id++ {
		fmt.Fprintf(&want, "committed %d\n", id)
	}
	if r.stdout != want.String() {
		t.Fatalf("standard output is not each commit once (%d bytes)", len(r.stdout))
	}
	out, err := exec.Command(prog, "verify", db).Output()
	if err != nil {
		t.Fatal(err)
	}
	if lines := strings.SplitN(string(out), "\n", 3); lines[0] != "integrity ok" || lines[1] != "rows "+strconv.Itoa(rows) {
		t.Fatalf("the database says %q", lines[:2])
	}
}

// TestBusyboxFileApplets: busybox's file applets under hvft change the
// host's files as they would natively (under --root, paths as the program
// sees them).
func TestBusyboxFileApplets(t *testing.T) {
	needBusybox(t)
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "d", "e"), 0o755)
	os.WriteFile(filepath.Join(root, "d", "e", "b.txt"), []byte("hello\n"), 0o644)
	for _, args := range [][]string{
		{"touch", "-d", "2020-01-02 03:04:05", "/t1"}, {"mkdir", "-p", "/x/y/z"}, {"cp", "-rp", "/d", "/dcopy"},
		{"mv", "/t1", "/t2"}, {"ln", "-s", "t2", "/link"}, {"ln", "/t2", "/hard"}, {"chmod", "600", "/t2"},
		{"tar", "cf", "/arch.tar", "-C", "/", "d"}, {"rm", "-rf", "/x"}, {"sh", "-c", "echo appended >> /d/e/b.txt"},
	} {
		r := hvft(t, "", append([]string{"--log-level", "warn", "run", "--linux", "--root", root, busybox, "--"}, args...)...)
		if r.code != 0 || strings.Contains(r.stderr, "unsupported") {
			t.Fatalf("%v: exit %d\n%s", args, r.code, r.stderr)
		}
	}
	st, err := os.Stat(filepath.Join(root, "t2"))
	if err != nil || st.Mode().Perm() != 0o600 || st.ModTime().Year() != 2020 {
		t.Fatalf("t2: %v %v", st, err)
	}
	if target, err := os.Readlink(filepath.Join(root, "link")); err != nil || target != "t2" {
		t.Fatalf("link -> %q (%v)", target, err)
	}
	hard, _ := os.Stat(filepath.Join(root, "hard"))
	if !os.SameFile(st, hard) {
		t.Fatal("hard is not a link to t2")
	}
	if _, err := os.Stat(filepath.Join(root, "x")); !os.IsNotExist(err) {
		t.Fatalf("rm -rf left x: %v", err)
	}
	if readFile(t, filepath.Join(root, "dcopy", "e", "b.txt")) != "hello\n" {
		t.Fatal("cp -r lost the file")
	}
	if readFile(t, filepath.Join(root, "d", "e", "b.txt")) != "hello\nappended\n" {
		t.Fatalf("append gave %q", readFile(t, filepath.Join(root, "d", "e", "b.txt")))
	}
	out, err := exec.Command("tar", "tf", filepath.Join(root, "arch.tar")).Output()
	if err != nil || !strings.Contains(string(out), "d/e/b.txt") {
		t.Fatalf("tar archive lists %q (%v)", out, err)
	}
}
