package main

import (
	"encoding/json"
	"strconv"
	"testing"

	"hvft/epoch"
	"hvft/vm"
	"hvft/vm/linux"
	"hvft/vm/uc"
)

// TestVersionTable: `hvft version --json` is the one table of versions,
// and it says what the code checks: the wire, board, snapshot and engine
// versions are the ones this build compares (the journal's too), each named once.
func TestVersionTable(t *testing.T) {
	r := hvft(t, "", "version", "--json")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	var rows []struct{ Name, Version, Covers, Refused string }
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil {
		t.Fatalf("%v\n%s", err, r.stdout)
	}
	got := map[string]string{}
	for _, row := range rows {
		if _, dup := got[row.Name]; dup {
			t.Errorf("%s listed twice", row.Name)
		}
		if row.Covers == "" || row.Refused == "" {
			t.Errorf("%s: says neither what it covers nor where a mismatch is refused: %+v", row.Name, row)
		}
		got[row.Name] = row.Version
	}
	for name, want := range map[string]string{
		"wire":     strconv.Itoa(epoch.Version),
		"board":    strconv.Itoa(vm.BoardVersion),
		"snapshot": strconv.Itoa(vm.SnapshotVersion),
		"engine":   uc.Version(),
		"journal":  strconv.Itoa(linux.JournalVersion),
	} {
		if got[name] != want {
			t.Errorf("%s version %q, the code's is %q", name, got[name], want)
		}
	}
	if r := hvft(t, "", "version", "extra"); r.code != exitFailure {
		t.Errorf("version with an argument: exit %d, want %d", r.code, exitFailure)
	}
}
