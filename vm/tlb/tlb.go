// Package tlb configures hvft's software-managed TLB: the entry size,
// capacity, replacement policy and seed of the TLB the hypervisor models
// over Unicorn's own (the model and the fill hook live in vm/uc, in C, on
// the hot path).
//
// The policy is deliberately allowed to be nondeterministic (random,
// seeded from the host by default): a miss that finds the modelled TLB
// full flushes Unicorn's TLB, so misses land at points that differ between
// replicas; the guest never observes one, so the replicas must still agree
// on every state hash. Tests run them with different policies to prove it.
package tlb

import (
	"fmt"
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

// Config sizes the modelled TLB.
type Config struct {
	PageSize uint64 // bytes per entry: a power of two, at least 4 KiB
	Entries  int    // capacity, MinEntries to MaxEntries
	Policy   Policy
	Seed     uint64 // random policy's seed
}

// MinEntries is the smallest capacity accepted: one instruction can touch
// its code page, a stack page and two data pages (a page-crossing access).
const MinEntries = 4

// MaxEntries bounds the capacity (its bookkeeping is allocated up front).
const MaxEntries = 1 << 16

// MaxPageSize bounds the entry size.
const MaxPageSize = 1 << 30

// Validate reports a configuration the machine cannot run with.
func (c Config) Validate() error {
	if c.PageSize < 4096 || c.PageSize&(c.PageSize-1) != 0 {
		return fmt.Errorf("TLB page size %d: must be a power of two of at least 4096", c.PageSize)
	}
	if c.PageSize > MaxPageSize {
		return fmt.Errorf("TLB page size %d: at most %d", c.PageSize, uint64(MaxPageSize))
	}
	if c.Entries < MinEntries || c.Entries > MaxEntries {
		return fmt.Errorf("TLB entries %d: must be at least %d and at most %d", c.Entries, MinEntries, MaxEntries)
	}
	if c.Policy < Random || c.Policy > LRU {
		return fmt.Errorf("TLB policy %d: unknown", int(c.Policy))
	}
	return nil
}
