package vm

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"hvft/vm/tlb"
)

var update = flag.Bool("update", false, "rewrite testdata/golden.json from this run")

const goldenPath = "../testdata/golden.json"

// goldenGuests read nothing from the environment, so their final state is a
// function of the image and arguments alone.
var goldenGuests = []struct {
	name string
	args []string
}{
	{"hello", []string{"golden"}},
	{"compute", []string{"1", "1"}},
	{"faults", nil},
	{"tlbstress", []string{"4", "2"}},
}

type goldenEntry struct {
	Hash   string `json:"final_hash"`
	Blocks uint64 `json:"blocks"`
	Output string `json:"console"`
}

// TestGoldenHashes runs each environment-free guest under every TLB
// capacity, entry size and policy, twice, and requires one final hash (and
// one block count) per guest: the TLB and Unicorn's translation cache must
// not show through. The hashes are also pinned in testdata/golden.json.
func TestGoldenHashes(t *testing.T) {
	golden := map[string]goldenEntry{}
	if data, err := os.ReadFile(goldenPath); err == nil {
		if err := json.Unmarshal(data, &golden); err != nil {
			t.Fatalf("%s: %v", goldenPath, err)
		}
	} else if !*update {
		t.Fatalf("%s: %v (run with -update to create it)", goldenPath, err)
	}
	got := map[string]goldenEntry{}
	for _, g := range goldenGuests {
		t.Run(g.name, func(t *testing.T) {
			var first *goldenEntry
			seen := map[uint64]bool{} // miss counts: proof the TLB really varied
			for _, page := range []uint64{16 << 10, 64 << 10} {
				for _, entries := range []int{8, 32, 128} {
					for _, policy := range []tlb.Policy{tlb.Random, tlb.FIFO, tlb.LRU} {
						for rep := uint64(0); rep < 2; rep++ {
							if testing.Short() && (rep > 0 || policy != tlb.Random) {
								continue
							}
							label := fmt.Sprintf("page=%d entries=%d policy=%v rep=%d", page, entries, policy, rep)
							cfg := Config{TLB: tlbConfig(page, entries, policy, 1000+rep*7919)}
							r := runGuest(t, g.name, g.args, cfg, nil, nil, 50_000)
							if r.err != nil || r.res.ExitCode != 0 {
								t.Fatalf("%s: exit %d, %v\n%s", label, r.res.ExitCode, r.err, r.out)
							}
							if r.stats.Answers != 0 {
								t.Fatalf("%s: guest asked the environment %d times; golden guests must not", label, r.stats.Answers)
							}
							e := goldenEntry{Hash: r.final.String(), Blocks: r.stats.Blocks, Output: string(r.out)}
							seen[r.stats.TLBMisses] = true
							if first == nil {
								first = &e
								continue
							}
							if e != *first {
								t.Fatalf("%s: hash %s blocks %d, but the first configuration gave %s blocks %d", label, e.Hash, e.Blocks, first.Hash, first.Blocks)
							}
						}
					}
				}
			}
			if len(seen) < 2 {
				t.Errorf("every configuration had the same miss count %v: the TLB did not vary", seen)
			}
			got[g.name] = *first
			if want, ok := golden[g.name]; ok && !*update && want != *first {
				t.Errorf("final state %+v, golden %+v", *first, want)
			} else if !ok && !*update {
				t.Errorf("%s has no entry for %s", goldenPath, g.name)
			}
		})
	}
	if *update {
		data, _ := json.MarshalIndent(got, "", "  ")
		if err := os.WriteFile(goldenPath, append(data, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s", filepath.Clean(goldenPath))
	}
}
