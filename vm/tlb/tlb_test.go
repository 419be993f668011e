package tlb

import "testing"

func TestConfigValidation(t *testing.T) {
	bad := []Config{
		{PageSize: 1000, Entries: 8},
		{PageSize: 2048, Entries: 8},
		{PageSize: 4096, Entries: 3},
		{PageSize: 4096, Entries: MaxEntries + 1},
		{PageSize: 4096, Entries: 1_000_000_000},
		{PageSize: 2 << 30, Entries: 8},
		{PageSize: 4096, Entries: 8, Policy: 9},
	}
	for _, c := range bad {
		if err := c.Validate(); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
	for _, c := range []Config{{PageSize: 4096, Entries: MinEntries}, {PageSize: 1 << 30, Entries: MaxEntries, Policy: LRU}} {
		if err := c.Validate(); err != nil {
			t.Errorf("%+v refused: %v", c, err)
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
