package main

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// linuxTrials is how many kills a Linux failover test makes: def, or
// HVFT_LINUX_TRIALS when set (make chaos raises it), or 2 under -short.
func linuxTrials(t *testing.T, def int) int {
	t.Helper()
	if s := os.Getenv("HVFT_LINUX_TRIALS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("HVFT_LINUX_TRIALS %q: want a positive count", s)
		}
		return n
	}
	if testing.Short() {
		return 2
	}
	return def
}

// exclfilesOutput is what testdata/linux/exclfiles.c prints for n rounds.
func exclfilesOutput(n int) string {
	var b strings.Builder
	for i := 1; i <= n; i++ {
		for _, s := range []string{"excl %d ok", "mkstemp %d ok", "rename %d ok", "lock %d ok", "taken %d errno 17",
			"missing %d errno 2", "mkdir %d ok", "link %d ok", "symlink %d ok"} {
			fmt.Fprintf(&b, s+"\n", i)
		}
	}
	fmt.Fprintf(&b, "done %d\n", n)
	return b.String()
}

// checkClaims fails unless dir holds what n rounds of exclfiles leave:
// each name once, the renamed file over current, no temporary file or
// lock left.
func checkClaims(t *testing.T, what, dir string, n int) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	want := []string{"current"}
	for i := 1; i <= n; i++ {
		want = append(want, fmt.Sprintf("d-%d", i), fmt.Sprintf("excl-%d", i), fmt.Sprintf("hard-%d", i), fmt.Sprintf("sym-%d", i))
	}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("%s: the directory holds %d names, want %d: %v", what, len(got), len(want), got)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "current")); err != nil || string(b) != fmt.Sprintf("%d\n", n) {
		t.Fatalf("%s: current holds %q (%v), want the last round's", what, b, err)
	}
	for i := 1; i <= n; i++ {
		excl := filepath.Join(dir, fmt.Sprintf("excl-%d", i))
		a, errA := os.Stat(excl)
		h, errH := os.Stat(filepath.Join(dir, fmt.Sprintf("hard-%d", i)))
		l, errL := os.Readlink(filepath.Join(dir, fmt.Sprintf("sym-%d", i)))
		b, errB := os.ReadFile(excl)
		if errA != nil || errH != nil || errL != nil || errB != nil || !os.SameFile(a, h) || l != fmt.Sprintf("excl-%d", i) || string(b) != fmt.Sprintf("%d\n", i) {
			t.Fatalf("%s: round %d's files are wrong: %v %v %v %v, link %q, contents %q", what, i, errA, errH, errL, errB, l, b)
		}
	}
}

// TestFileClaimsSurvivePrimaryKills: a program of our own claims file
// names the ways programs do (O_CREAT|O_EXCL, mkstemp, a lock file, a
// rename over an existing file, an unlink of a missing file, mkdir,
// link, symlink), replicated, and its primary is SIGKILLed at a random
// epoch: standard output is each step once, with the answer a native run
// gives (no EIO, no EEXIST for a name the old primary claimed), and the
// directory holds each file once. HVFT_LINUX_TRIALS sets the number of
// trials.
func TestFileClaimsSurvivePrimaryKills(t *testing.T) {
	prog := buildStatic(t, "gcc", "exclfiles", nil, nil)
	trials := linuxTrials(t, 12)
	const rounds = 60
	want := exclfilesOutput(rounds)
	dir := t.TempDir()
	out, stderr, code := runChild(t, prog, dir, strconv.Itoa(rounds))
	if code != 0 || out != want {
		t.Fatalf("natively: exit %d, output as expected %v\n%s", code, out == want, stderr)
	}
	checkClaims(t, "natively", dir, rounds)

	// How many epochs an unkilled replicated run lasts bounds the kills.
	args := func(journal, report, dir string, killAfter string) []string {
		return []string{"--log-level", "warn", "demo", "--linux", "--journal-dir", journal, "--kill-after", killAfter, "--epoch-blocks", "500",
			"--report", report, prog, "--", dir, strconv.Itoa(rounds)}
	}
	rp := filepath.Join(t.TempDir(), "probe.json")
	dir = t.TempDir()
	if r := hvft(t, "", args(t.TempDir(), rp, dir, "never")...); r.code != 0 || r.stdout != want {
		t.Fatalf("unkilled run: exit %d, output as expected %v\n%s", r.code, r.stdout == want, r.stderr)
	}
	checkClaims(t, "unkilled", dir, rounds)
	var base struct {
		Backup struct {
			Epochs uint64 `json:"epochs"`
		} `json:"backup"`
	}
	json.Unmarshal([]byte(readFile(t, rp)), &base)
	epochs := base.Backup.Epochs
	if epochs < 20 {
		t.Fatalf("the unkilled run lasted %d epochs: too few to kill inside", epochs)
	}

	rng := rand.New(rand.NewPCG(testSeed(t), 11))
	struck := 0
	for i := 0; i < trials; i++ {
		killAt := 2 + rng.Uint64N(epochs-4)
		what := fmt.Sprintf("trial %d (kill after epoch %d)", i, killAt)
		dir, journal := t.TempDir(), t.TempDir()
		report := filepath.Join(t.TempDir(), "demo.json")
		r := hvft(t, "", args(journal, report, dir, strconv.FormatUint(killAt, 10))...)
		if r.code != 0 {
			t.Fatalf("%s: exit %d\n%s", what, r.code, r.stderr)
		}
		var rep demoReport
		json.Unmarshal([]byte(readFile(t, report)), &rep)
		if rep.Killed && rep.Backup.BecamePrimary {
			struck++
		}
		if r.stdout != want {
			t.Fatalf("%s: standard output is not each step once with its native answer%s", what, firstDifference(want, r.stdout))
		}
		checkClaims(t, what, dir, rounds)
		if left, _ := filepath.Glob(filepath.Join(journal, ".hvft-journal-*")); len(left) > 0 {
			t.Fatalf("%s: the journal outlived the run: %v", what, left)
		}
	}
	if struck == 0 {
		t.Fatalf("no kill struck a live primary in %d trials", trials)
	}
	t.Logf("%d of %d kills struck a live primary (a run over before its kill epoch is not counted)", struck, trials)
}
