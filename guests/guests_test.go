package guests

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestImagesAreReproducible rebuilds every guest from source and compares
// the bytes with the committed images, when this machine has the toolchain
// they were built with.
func TestImagesAreReproducible(t *testing.T) {
	var have []string
	for _, tool := range []string{"gcc", "ld"} {
		out, err := exec.Command(tool, "--version").Output()
		if err != nil {
			t.Skipf("skipped: no %s here (%v); the images were built with:\n%s", tool, err, Toolchain())
		}
		have = append(have, strings.SplitN(string(out), "\n", 2)[0])
	}
	if got := strings.Join(have, "\n") + "\n"; got != Toolchain() {
		t.Skipf("skipped: this toolchain is\n%sbut the images were built with\n%s", got, Toolchain())
	}
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("skipped: no make here")
	}
	out, err := exec.Command("make", "--no-print-directory", "check").CombinedOutput()
	if err != nil {
		t.Fatalf("make check: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "reproducible") {
		t.Fatalf("make check said:\n%s", out)
	}
}

func TestListAndLoad(t *testing.T) {
	list := List()
	if len(list) < 6 {
		t.Fatalf("only %d built-in guests", len(list))
	}
	for _, g := range list {
		if g.Description == "" {
			t.Errorf("%s has no description", g.Name)
		}
		if _, _, err := Load(g.Name); err != nil {
			t.Error(err)
		}
	}
	if _, _, err := Load("nosuch"); err == nil || !strings.Contains(err.Error(), "hello") {
		t.Errorf("unknown guest: %v (want the list of built-ins)", err)
	}
	if _, _, err := Load("../etc/passwd.elf"); err == nil {
		t.Error("missing path accepted")
	}
	dir := t.TempDir()
	if err := os.WriteFile(dir+"/g.elf", []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if data, _, err := Load(dir + "/g.elf"); err != nil || string(data) != "x" {
		t.Errorf("path load: %q %v", data, err)
	}
}

func TestCheckTickerCatchesDamage(t *testing.T) {
	// FNV-1a 64 over 100 (8 bytes LE) then 0x2a (4 bytes LE).
	good := "tick 1 clock=100 rand=0000002a sum=683f4daca300637b\n"
	if err := CheckTicker(good, 1); err != nil {
		t.Fatal(err)
	}
	bad := map[string]string{
		"missing":   "",
		"repeated":  good + good,
		"bad sum":   strings.Replace(good, "sum=68", "sum=69", 1),
		"bad index": strings.Replace(good, "tick 1", "tick 2", 1),
		"garbage":   "hello\n",
	}
	for name, out := range bad {
		if err := CheckTicker(out, 1); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
}
