package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestBenchQuick runs `hvft bench --quick` and checks the report's shape
// and sanity (never its wall-clock figures against thresholds).
func TestBenchQuick(t *testing.T) {
	if testing.Short() {
		t.Skip("skipped in -short: hvft bench --quick takes about two minutes")
	}
	out := t.TempDir()
	// Its own bound: the whole matrix, on a loaded host, takes several
	// times what it takes alone.
	r := runHvft(t, 10*time.Minute, "", nil, "--log-level", "warn", "bench", "--quick", "--kills", "3", "--json", "--out", out)
	if r.code != 0 {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	// The bench's disk images and their fence files are gone; its plots
	// and the Linux workload it built stay.
	left, _ := filepath.Glob(filepath.Join(out, "*.img*"))
	if len(left) != 0 {
		t.Errorf("the bench left %v in %s", left, out)
	}
	var rep struct {
		Rows []struct {
			Guest       string             `json:"guest"`
			Mode        string             `json:"mode"`
			Seconds     map[string]float64 `json:"seconds"`
			Blocks      uint64             `json:"blocks"`
			RatioToBare float64            `json:"ratio_to_bare"`
			RatioToRun  float64            `json:"ratio_to_run"`
			Epochs      uint64             `json:"epochs"`
			LogPerEpoch float64            `json:"log_bytes_per_epoch"`
		} `json:"rows"`
		Sweep []struct {
			Guest, Protocol string
			EpochBlocks     uint64  `json:"epoch_blocks"`
			Normalized      float64 `json:"normalized"`
		} `json:"sweep"`
		Failover []struct {
			Kind       string             `json:"kind"`
			Kills      int                `json:"kills"`
			Detect     map[string]float64 `json:"detect_ms"`
			KillToLive map[string]float64 `json:"kill_to_live_ms"`
		} `json:"failover"`
		EpochCost struct {
			Micros map[string]float64 `json:"micros"`
		} `json:"epoch_cost"`
		Join struct {
			PauseMS map[string]float64 `json:"pause_ms"`
		} `json:"join"`
		Linux []struct {
			Name        string             `json:"name"`
			Skipped     string             `json:"skipped"`
			QemuMS      map[string]float64 `json:"qemu_ms"`
			RunMS       map[string]float64 `json:"run_ms"`
			RunOverQemu float64            `json:"run_over_qemu"`
		} `json:"linux"`
		Plots []string `json:"plots"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("report is not JSON: %v\n%s", err, r.stdout)
	}
	// A difference of two timings: on a busy host it may even be
	// negative, so only its shape is checked.
	if m := rep.EpochCost.Micros; !(m["min"] <= m["median"] && m["median"] <= m["max"]) || len(m) != 3 {
		t.Errorf("epoch cost %v", m)
	}
	if p := rep.Join.PauseMS; !(p["min"] > 0 && p["min"] <= p["median"] && p["median"] <= p["max"]) {
		t.Errorf("join pause %v", p)
	}
	// make deps installs qemu-user, busybox-static, a static libc and a
	// static liblua: every comparison runs.
	names := map[string]bool{}
	for _, l := range rep.Linux {
		names[l.Name] = true
		if l.Skipped != "" || !(l.QemuMS["min"] > 0 && l.RunMS["min"] > 0 && l.RunOverQemu > 0) {
			t.Errorf("Linux %s against qemu-x86_64: %+v", l.Name, l)
		}
	}
	if !names["branchy"] || !names["bzip2"] || !names["lua"] {
		t.Errorf("Linux programs compared: %v, want branchy, bzip2 and lua", names)
	}
	want := map[string]bool{}
	for _, g := range []string{"compute", "branchy", "ticker", "tlbstress", "diskkv"} {
		for _, m := range []string{"run", "replicated", "strict", "run-adaptive", "repl-adaptive"} {
			want[g+"/"+m] = true
		}
	}
	want["compute/bare"], want["branchy/bare"], want["tlbstress/bare"] = true, true, true
	for _, row := range rep.Rows {
		key := row.Guest + "/" + row.Mode
		if !want[key] {
			t.Errorf("unexpected row %s", key)
		}
		delete(want, key)
		s := row.Seconds
		if !(s["min"] > 0 && s["min"] <= s["median"] && s["median"] <= s["max"]) || row.Blocks == 0 {
			t.Errorf("%s: seconds %v, blocks %d", key, s, row.Blocks)
		}
		if row.Mode != "bare" && (row.RatioToRun <= 0 || row.Epochs == 0) {
			t.Errorf("%s: ratio to run %v, epochs %d", key, row.RatioToRun, row.Epochs)
		}
		if (row.Mode == "replicated" || row.Mode == "strict") && row.LogPerEpoch <= 0 {
			t.Errorf("%s: no log bytes", key)
		}
		if (row.Guest == "compute" || row.Guest == "tlbstress") && row.RatioToBare <= 0 {
			t.Errorf("%s: no ratio to bare", key)
		}
	}
	for key := range want {
		t.Errorf("row %s missing", key)
	}
	if len(rep.Sweep) != 12 {
		t.Errorf("sweep has %d points, want 2 guests x 2 protocols x 3 lengths", len(rep.Sweep))
	}
	for _, p := range rep.Sweep {
		if p.Normalized <= 0 || p.EpochBlocks == 0 {
			t.Errorf("sweep point %+v", p)
		}
	}
	if len(rep.Failover) != 2 {
		t.Fatalf("failover kinds: %+v", rep.Failover)
	}
	for _, f := range rep.Failover {
		if f.Kills == 0 || f.Detect["median"] <= 0 || f.KillToLive["max"] < f.KillToLive["min"] {
			t.Errorf("failover %s: %+v", f.Kind, f)
		}
	}
	// A silent primary may be declared dead only after the 500 ms failure
	// timeout has run from the last message it sent, which was at most a
	// 50 ms heartbeat interval before it fell silent.
	if silent := rep.Failover[1]; silent.Detect["min"] < 450 {
		t.Errorf("a silent primary was declared dead %v ms after it fell silent: before the failure timeout", silent.Detect["min"])
	}
	for _, name := range []string{"epoch-sweep.svg", "epoch-sweep.png"} {
		data, err := os.ReadFile(filepath.Join(out, name))
		if err != nil {
			t.Fatal(err)
		}
		if name == "epoch-sweep.png" && !bytes.HasPrefix(data, []byte("\x89PNG")) || name == "epoch-sweep.svg" && !strings.Contains(string(data), "<svg") {
			t.Errorf("%s is not what its name says (%d bytes)", name, len(data))
		}
	}
	table := hvft(t, "", "bench", "--json", "--csv")
	if table.code != exitFailure || !strings.Contains(table.stderr, "exclude") {
		t.Errorf("--json --csv: exit %d %s", table.code, table.stderr)
	}
}
