// Package tlb is the replacement logic of hvft's software-managed TLB: which
// guest-physical pages are installed in the CPU's memory map, and which one
// to evict when a miss finds the table full. It knows nothing of Unicorn; the
// machine performs the map and unmap calls it decides.
//
// The policy is deliberately allowed to be nondeterministic (random,
// seeded from the host by default): the guest never observes a miss, so the
// replicas of one run may evict differently and must still agree on every
// state hash. Tests run them with different policies to prove it.
package tlb

import (
	"fmt"
	"math/rand/v2"
	"strings"
)

// Policy chooses the victim when the table is full.
type Policy int

// Replacement policies.
const (
	Random Policy = iota // uniformly random victim (default)
	FIFO                 // oldest installed entry
	LRU                  // least recently installed or touched ("LRU-ish": see Touch)
)

// Policies lists the policy names accepted by ParsePolicy.
var policyNames = map[string]Policy{"random": Random, "fifo": FIFO, "lru": LRU}

func (p Policy) String() string {
	for name, q := range policyNames {
		if q == p {
			return name
		}
	}
	return fmt.Sprintf("policy(%d)", int(p))
}

// ParsePolicy parses "random", "fifo" or "lru".
func ParsePolicy(s string) (Policy, error) {
	if p, ok := policyNames[strings.ToLower(s)]; ok {
		return p, nil
	}
	return 0, fmt.Errorf("unknown TLB policy %q (want random, fifo or lru)", s)
}

// Config sizes a table.
type Config struct {
	PageSize uint64 // bytes per entry: a power of two, at least 4 KiB
	Entries  int    // capacity, at least MinEntries
	Policy   Policy
	Seed     uint64 // random policy's seed
}

// MinEntries is the smallest capacity accepted: one instruction can touch
// its code page, a stack page and two data pages (a page-crossing access).
const MinEntries = 4

// Validate reports a configuration the machine cannot run with.
func (c Config) Validate() error {
	if c.PageSize < 4096 || c.PageSize&(c.PageSize-1) != 0 {
		return fmt.Errorf("TLB page size %d: must be a power of two of at least 4096", c.PageSize)
	}
	if c.Entries < MinEntries {
		return fmt.Errorf("TLB entries %d: must be at least %d", c.Entries, MinEntries)
	}
	if c.Policy < Random || c.Policy > LRU {
		return fmt.Errorf("TLB policy %d: unknown", int(c.Policy))
	}
	return nil
}

// Stats counts the table's work.
type Stats struct {
	Misses    uint64
	Evictions uint64
}

// Table is the set of installed pages.
type Table struct {
	cfg   Config
	rng   *rand.Rand
	slots []slot
	index map[uint64]int // page base -> slot
	tick  uint64
	stats Stats
}

type slot struct {
	page      uint64
	installed uint64 // tick of installation (FIFO)
	used      uint64 // tick of installation or last Touch (LRU)
}

// New returns an empty table.
func New(cfg Config) (*Table, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Table{
		cfg:   cfg,
		rng:   rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15)),
		index: make(map[uint64]int, cfg.Entries),
	}, nil
}

// Config returns the table's configuration.
func (t *Table) Config() Config { return t.cfg }

// Stats returns the counters.
func (t *Table) Stats() Stats { return t.stats }

// PageOf returns the base of the page holding addr.
func (t *Table) PageOf(addr uint64) uint64 { return addr &^ (t.cfg.PageSize - 1) }

// Contains reports whether the page holding addr is installed.
func (t *Table) Contains(addr uint64) bool {
	_, ok := t.index[t.PageOf(addr)]
	return ok
}

// Len is the number of installed pages.
func (t *Table) Len() int { return len(t.slots) }

// Pages returns the installed page bases in slot order.
func (t *Table) Pages() []uint64 {
	out := make([]uint64, len(t.slots))
	for i, s := range t.slots {
		out[i] = s.page
	}
	return out
}

// Touch marks the page holding addr as recently used, for the LRU policy.
// The machine calls it at epoch boundaries for the pages under RIP and RSP:
// Unicorn reports no accesses to installed pages, so recency is sampled.
func (t *Table) Touch(addr uint64) {
	if i, ok := t.index[t.PageOf(addr)]; ok {
		t.tick++
		t.slots[i].used = t.tick
	}
}

// Miss records a miss on the page holding addr and decides the victim. When
// the table is full it returns the page to evict (evict true); pinned pages
// are never chosen. The caller unmaps the victim, maps the new page and then
// calls Installed. It is an error for every entry to be pinned.
func (t *Table) Miss(addr uint64, pinned func(page uint64) bool) (victim uint64, evict bool, err error) {
	t.stats.Misses++
	if len(t.slots) < t.cfg.Entries {
		return 0, false, nil
	}
	i, err := t.choose(pinned)
	if err != nil {
		return 0, false, err
	}
	return t.slots[i].page, true, nil
}

func (t *Table) choose(pinned func(uint64) bool) (int, error) {
	candidates := make([]int, 0, len(t.slots))
	for i, s := range t.slots {
		if pinned == nil || !pinned(s.page) {
			candidates = append(candidates, i)
		}
	}
	if len(candidates) == 0 {
		return 0, fmt.Errorf("TLB: all %d entries are pinned by the running instruction", len(t.slots))
	}
	switch t.cfg.Policy {
	case FIFO:
		best := candidates[0]
		for _, i := range candidates[1:] {
			if t.slots[i].installed < t.slots[best].installed {
				best = i
			}
		}
		return best, nil
	case LRU:
		best := candidates[0]
		for _, i := range candidates[1:] {
			if t.slots[i].used < t.slots[best].used {
				best = i
			}
		}
		return best, nil
	default:
		return candidates[t.rng.IntN(len(candidates))], nil
	}
}

// Evicted removes a page chosen by Miss after the caller unmapped it.
func (t *Table) Evicted(page uint64) {
	i, ok := t.index[page]
	if !ok {
		return
	}
	last := len(t.slots) - 1
	if i != last {
		t.slots[i] = t.slots[last]
		t.index[t.slots[i].page] = i
	}
	t.slots = t.slots[:last]
	delete(t.index, page)
	t.stats.Evictions++
}

// Installed records that the caller mapped page.
func (t *Table) Installed(page uint64) {
	if _, ok := t.index[page]; ok {
		return
	}
	t.tick++
	t.index[page] = len(t.slots)
	t.slots = append(t.slots, slot{page: page, installed: t.tick, used: t.tick})
}
