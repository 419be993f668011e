package tlb

import "testing"

func fill(t *testing.T, tb *Table, pages ...uint64) {
	t.Helper()
	for _, p := range pages {
		victim, evict, err := tb.Miss(p, nil)
		if err != nil {
			t.Fatal(err)
		}
		if evict {
			tb.Evicted(victim)
		}
		tb.Installed(tb.PageOf(p))
	}
}

func TestPoliciesChooseTheirVictim(t *testing.T) {
	const pg = 0x10000
	cases := []struct {
		policy Policy
		touch  uint64
		want   uint64
	}{
		{FIFO, 0, 0},      // oldest
		{FIFO, 0 * pg, 0}, // touching does not matter for FIFO
		{LRU, 0, 1 * pg},  // page 0 touched, so page 1 is least recent
		{LRU, 3 * pg, 0},  // page 3 touched, page 0 oldest
	}
	for _, c := range cases {
		tb, err := New(Config{PageSize: pg, Entries: 4, Policy: c.policy})
		if err != nil {
			t.Fatal(err)
		}
		fill(t, tb, 0, pg, 2*pg, 3*pg)
		tb.Touch(c.touch)
		victim, evict, err := tb.Miss(4*pg, nil)
		if err != nil || !evict {
			t.Fatalf("%v: Miss = %v, %v, %v", c.policy, victim, evict, err)
		}
		if victim != c.want {
			t.Errorf("%v touch %#x: victim %#x, want %#x", c.policy, c.touch, victim, c.want)
		}
	}
}

func TestPinnedPagesAreNeverEvicted(t *testing.T) {
	const pg = 0x10000
	for _, p := range []Policy{Random, FIFO, LRU} {
		tb, _ := New(Config{PageSize: pg, Entries: 4, Policy: p, Seed: 7})
		fill(t, tb, 0, pg, 2*pg, 3*pg)
		for i := 0; i < 100; i++ {
			victim, evict, err := tb.Miss(uint64(10+i)*pg, func(page uint64) bool { return page != 2*pg })
			if err != nil || !evict || victim != 2*pg {
				t.Fatalf("%v: victim %#x evict %v err %v, want the only unpinned page", p, victim, evict, err)
			}
		}
		if _, _, err := tb.Miss(99*pg, func(uint64) bool { return true }); err == nil {
			t.Errorf("%v: all pinned but no error", p)
		}
	}
}

func TestRandomPolicyDependsOnSeed(t *testing.T) {
	const pg = 0x1000
	trail := func(seed uint64) []uint64 {
		tb, _ := New(Config{PageSize: pg, Entries: 8, Policy: Random, Seed: seed})
		var out []uint64
		for i := uint64(0); i < 200; i++ {
			victim, evict, _ := tb.Miss(i*pg, nil)
			if evict {
				tb.Evicted(victim)
				out = append(out, victim)
			}
			tb.Installed(i * pg)
		}
		return out
	}
	a, b, c := trail(1), trail(1), trail(2)
	same := func(x, y []uint64) bool {
		for i := range x {
			if x[i] != y[i] {
				return false
			}
		}
		return len(x) == len(y)
	}
	if !same(a, b) {
		t.Error("same seed gave different victims")
	}
	if same(a, c) {
		t.Error("different seeds gave the same 192 victims")
	}
	tb, _ := New(Config{PageSize: pg, Entries: 8, Policy: Random, Seed: 1})
	fill(t, tb, 0, pg)
	if st := tb.Stats(); st.Misses != 2 || st.Evictions != 0 || tb.Len() != 2 {
		t.Errorf("stats %+v len %d", st, tb.Len())
	}
}

func TestConfigValidation(t *testing.T) {
	bad := []Config{
		{PageSize: 1000, Entries: 8},
		{PageSize: 2048, Entries: 8},
		{PageSize: 4096, Entries: 3},
		{PageSize: 4096, Entries: 8, Policy: 9},
	}
	for _, c := range bad {
		if _, err := New(c); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
	if _, err := ParsePolicy("mru"); err == nil {
		t.Error("unknown policy accepted")
	}
	for _, s := range []string{"random", "fifo", "lru", "LRU"} {
		if _, err := ParsePolicy(s); err != nil {
			t.Error(err)
		}
	}
}
