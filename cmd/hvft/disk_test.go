package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"hvft/guests"
	"hvft/vm"
)

// splitmix64 and the key/value derivation of the diskkv guest
// (docs/board.md), so the test checks values it did not read from the run.
func splitmix64(z uint64) uint64 {
	z += 0x9E3779B97F4A7C15
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
	z = (z ^ (z >> 27)) * 0x94D049BB133111EB
	return z ^ (z >> 31)
}

func kvPut(seed, seq, keys uint64) string {
	return fmt.Sprintf("k%d=%016x", splitmix64(seed^seq)%keys, splitmix64(seed*0x9E3779B97F4A7C15+seq))
}

var putLine = regexp.MustCompile(`^put (\d+) (k\d+=[0-9a-f]{16})$`)

// checkPuts requires the console to hold puts 1..n, once each, in order,
// with the values the guest's formula gives.
func checkPuts(console string, n, seed, keys uint64) error {
	next := uint64(1)
	for _, line := range strings.Split(console, "\n") {
		m := putLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		seq, _ := strconv.ParseUint(m[1], 10, 64)
		if seq != next {
			return fmt.Errorf("put %d where put %d was due", seq, next)
		}
		if want := kvPut(seed, seq, keys); m[2] != want {
			return fmt.Errorf("put %d is %s, want %s", seq, m[2], want)
		}
		next++
	}
	if next != n+1 {
		return fmt.Errorf("%d puts acknowledged, want %d", next-1, n)
	}
	return nil
}

// verifyImage cold-boots the image with diskkv verify and requires every
// put 1..n in its record chain.
func verifyImage(t *testing.T, img string, n, seed, keys uint64) {
	t.Helper()
	r := hvft(t, "", "--log-level", "warn", "run", "--disk", img, "diskkv", "--", "verify")
	if r.code != 0 || !strings.Contains(r.stdout, fmt.Sprintf("diskkv verify ok records=%d\n", n)) {
		t.Fatalf("cold reboot of %s: exit %d\n%s%s", img, r.code, r.stdout, r.stderr)
	}
	for seq := uint64(1); seq <= n; seq++ {
		if want := fmt.Sprintf("rec %d %s\n", seq, kvPut(seed, seq, keys)); !strings.Contains(r.stdout, want) {
			t.Fatalf("cold reboot: record %d missing (%q)", seq, want)
		}
	}
}

// TestDiskkvSurvivesPrimaryKills: replicated diskkv, the primary SIGKILLed
// at random epochs over several seeds (logged). Every put the guest
// acknowledged is on the console once, in order, and in the image after the
// failover and after a cold reboot; the chain verifies; some runs take over
// with a disk operation in flight, complete it as UNCERTAIN and the guest
// reissues it (counted).
func TestDiskkvSurvivesPrimaryKills(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 3))
	runs := 6
	if s := os.Getenv("HVFT_DISK_RUNS"); s != "" {
		runs, _ = strconv.Atoi(s)
	}
	if testing.Short() {
		runs = 2
	}
	const puts, keys = 100, 8
	uncertainRuns, reissues := 0, 0
	for i := 0; i < runs; i++ {
		kvSeed := uint64(1 + rng.IntN(1000))
		killAt := 2 + rng.IntN(90)
		dir := t.TempDir()
		img, report := filepath.Join(dir, "disk.img"), filepath.Join(dir, "demo.json")
		r := hvft(t, "", "--log-level", "warn", "demo", "--disk", img, "--kill-after", strconv.Itoa(killAt), "--report", report,
			"diskkv", "--", "run", strconv.Itoa(puts), strconv.FormatUint(kvSeed, 10), strconv.Itoa(keys))
		if r.code != 0 {
			t.Fatalf("run %d (kv seed %d, kill after %d): exit %d\n%s", i, kvSeed, killAt, r.code, r.stderr)
		}
		if err := checkPuts(r.stdout, puts, kvSeed, keys); err != nil {
			t.Fatalf("run %d (kv seed %d, kill after %d): %v\n%s", i, kvSeed, killAt, err, r.stdout)
		}
		var rep struct {
			Killed bool `json:"killed"`
			Backup struct {
				Failover *struct {
					Uncertain int `json:"uncertain"`
				} `json:"failover"`
			} `json:"backup"`
		}
		data, _ := os.ReadFile(report)
		if err := json.Unmarshal(data, &rep); err != nil {
			t.Fatal(err)
		}
		m := regexp.MustCompile(`diskkv done records=(\d+) reissues=(\d+)`).FindStringSubmatch(r.stdout)
		if m == nil || m[1] != strconv.Itoa(puts) {
			t.Fatalf("run %d: no final line with %d records:\n%s", i, puts, r.stdout)
		}
		guestReissues, _ := strconv.Atoi(m[2])
		uncertain := 0
		if rep.Backup.Failover != nil {
			uncertain = rep.Backup.Failover.Uncertain
		}
		if guestReissues != uncertain {
			t.Errorf("run %d: the guest reissued %d operations, hvft completed %d as uncertain", i, guestReissues, uncertain)
		}
		if uncertain > 0 {
			uncertainRuns++
			reissues += guestReissues
		}
		verifyImage(t, img, puts, kvSeed, keys)
		t.Logf("run %d: kv seed %d, killed after epoch %d (killed %v), uncertain completions %d", i, kvSeed, killAt, rep.Killed, uncertain)
	}
	t.Logf("%d of %d runs took over with a disk operation in flight; %d reissues", uncertainRuns, runs, reissues)
	if runs >= 4 && uncertainRuns == 0 {
		t.Errorf("no run took over with a disk operation in flight: the uncertain path went untested")
	}
}

// TestBackupNeverTouchesTheDisk: a backup given its own copy of the image
// is refused at the handshake (the images' identities differ: the two
// would write different disks). Given the copy and the primary's fence
// file too, and run as if on another host (where device and inode numbers
// prove nothing), it is refused all the same: the token the primary
// writes beside its image when it welcomes a backup is not beside the
// copy. Given the primary's image itself, in a mount namespace where the
// image's directory is read-only, it replicates a whole run: it wrote
// nothing there, or it would have failed.
func TestBackupNeverTouchesTheDisk(t *testing.T) {
	dir := t.TempDir()
	primaryImg, backupImg := filepath.Join(dir, "p.img"), filepath.Join(dir, "b.img")
	blank := bytes.Repeat([]byte{0xee}, 1<<20)
	for _, p := range []string{primaryImg, backupImg} {
		if err := os.WriteFile(p, blank, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	guest := []string{"diskkv", "--", "run", "30", "5", "4"}
	addr := freeAddr(t)
	primary := startHvft(t, append([]string{"--log-level", "warn", "primary", "--listen", addr, "--disk", primaryImg, "--timeout", "2m"}, guest...)...)
	b := hvft(t, "", append([]string{"--log-level", "warn", "backup", "--primary", addr, "--disk", backupImg}, guest...)...)
	if b.code != exitFailure || !strings.Contains(b.stderr, "the disk images are different files") {
		t.Fatalf("a backup on another image: exit %d\n%s", b.code, b.stderr)
	}
	fence, err := os.ReadFile(vm.FencePath(primaryImg))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(vm.FencePath(backupImg), fence, 0o644); err != nil {
		t.Fatal(err)
	}
	b = hvftUnshared(t, "hostname hvft-other-host", append([]string{"--log-level", "warn", "backup", "--primary", addr, "--disk", backupImg}, guest...)...)
	if b.code != exitFailure || !strings.Contains(b.stderr, "is not the primary's") {
		t.Fatalf("a copy with the primary's fence, on another host: exit %d\n%s", b.code, b.stderr)
	}
	primary.cmd.Process.Kill()
	<-primary.done
	addr = freeAddr(t)
	primary = startHvft(t, append([]string{"--log-level", "warn", "primary", "--listen", addr, "--disk", primaryImg}, guest...)...)
	ro := fmt.Sprintf("mount --bind %[1]q %[1]q && mount -o remount,bind,ro %[1]q", dir)
	b = hvftUnshared(t, ro, append([]string{"--log-level", "warn", "backup", "--primary", addr, "--disk", primaryImg}, guest...)...)
	if b.code != 0 || b.stdout != "" {
		t.Fatalf("backup on a read-only view of the image: exit %d, stdout %q\n%s", b.code, b.stdout, b.stderr)
	}
	if code := primary.wait(t); code != 0 {
		t.Fatalf("primary exit %d\n%s", code, primary.stderr.String())
	}
	verifyImage(t, primaryImg, 30, 5, 4)
}

// TestDiskBadInput: bad commands get error statuses and damage nothing
// (the diskbad guest checks each); bad images are refused with a clear
// message; a backup with another disk size is refused at the handshake.
func TestDiskBadInput(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "d.img")
	r := hvft(t, "", "--log-level", "warn", "run", "--disk", img, "diskbad")
	if r.code != 0 || !strings.Contains(r.stdout, "diskbad ok") {
		t.Fatalf("diskbad: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	for _, want := range []string{"beyond-end status=3", "dma-outside-ram status=3", "count-zero status=3", "count-too-big status=3", "busy refused=1"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("diskbad output lacks %q", want)
		}
	}
	odd := filepath.Join(dir, "odd.img")
	os.WriteFile(odd, make([]byte, 1000), 0o644)
	for _, c := range []struct {
		disk, want string
	}{
		{filepath.Join(dir, "no", "such", "dir.img"), "no such file"},
		{dir, "not a regular file"},
		{odd, "multiple of 512"},
	} {
		r := hvft(t, "", "--log-level", "error", "run", "--disk", c.disk, "diskkv")
		if r.code != exitFailure || !strings.Contains(r.stderr, c.want) {
			t.Errorf("--disk %s: exit %d, stderr %q (want %q)", c.disk, r.code, r.stderr, c.want)
		}
	}
	r = hvft(t, "", "--log-level", "error", "run", "--disk", filepath.Join(dir, "x.img"), "--disk-size", "1000", "diskkv")
	if r.code != exitFailure || !strings.Contains(r.stderr, "multiple of 512") {
		t.Errorf("--disk-size 1000: exit %d, stderr %q", r.code, r.stderr)
	}
	addr := freeAddr(t)
	primary := startHvft(t, "--log-level", "warn", "primary", "--listen", addr, "--backup-wait", "5s", "--disk", img, "diskkv", "--", "run", "3")
	r = hvft(t, "", "--log-level", "error", "backup", "--primary", addr, "--disk", filepath.Join(dir, "big.img"), "--disk-size", "8MiB", "diskkv", "--", "run", "3")
	if r.code != exitFailure || !strings.Contains(r.stderr, "disk size differs") {
		t.Errorf("backup with another disk size: exit %d, stderr %q", r.code, r.stderr)
	}
	primary.cmd.Process.Kill()
}

// TestConsoleOutFileExactlyOnce: primary and backup share a console file;
// after the primary is killed the file holds every ticker line once.
func TestConsoleOutFileExactlyOnce(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "console.txt")
	addr := freeAddr(t)
	guest := []string{"ticker", "--", "40", "3000"}
	primary := startHvft(t, append([]string{"--log-level", "warn", "primary", "--listen", addr, "--console-out", out}, guest...)...)
	backup := startHvft(t, append([]string{"--log-level", "warn", "backup", "--primary", addr, "--console-out", out}, guest...)...)
	primary.waitFor(t, "12 console lines", func() bool { return fileLines(out) >= 12 })
	primary.cmd.Process.Kill()
	primary.wait(t)
	if code := backup.wait(t); code != 0 {
		t.Fatalf("backup exit %d\n%s", code, backup.stderr.String())
	}
	data, _ := os.ReadFile(out)
	if err := guests.CheckTicker(string(data), 40); err != nil {
		t.Fatalf("console file: %v\n%s", err, data)
	}
}

// hvftUnshared runs hvft in a UTS and a mount namespace of its own after
// the shell commands setup (a host name, a read-only mount): to the
// handshake, a replica on another host, or one that cannot write.
func hvftUnshared(t *testing.T, setup string, args ...string) result {
	t.Helper()
	return runHvft(t, hvftBound, "", []string{"unshare", "--uts", "--mount", "--", "sh", "-c", setup + ` && exec "$@"`, "sh"}, args...)
}
