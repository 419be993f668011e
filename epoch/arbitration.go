package epoch

import "fmt"

// Arbitration is rule 7 for one replica: a replica acts alone (a backup
// taking over, a primary going on without its backup) only once it has
// won the next generation of the run at an arbiter both replicas reach,
// by compare-and-swap: generation g+1 is won by exactly one replica, from
// g. The loser stops for good. No lease is renewed and no clock is read:
// a slow or paused replica loses nothing until it tries to act alone, and
// then it loses to whoever moved first. The caller performs the claims;
// this type only says which generation to claim and what the answer
// allows.
type Arbitration struct {
	held    uint64 // the generation this replica runs under (0: none yet)
	claim   uint64 // the generation being claimed (0: none)
	lost    bool
	lostErr error
}

// Start records the generation the run has when this replica enters it:
// a primary's first claim, or what a backup reads when it connects.
func (a *Arbitration) Start(gen uint64) { a.held = gen }

// Held is the generation this replica runs under (0 for a nil
// Arbitration: a replica without an arbiter).
func (a *Arbitration) Held() uint64 {
	if a == nil {
		return 0
	}
	return a.held
}

// Claim returns the generation to claim before acting alone, and false
// once the replica has lost (it must not try again) or while a claim is
// under way.
func (a *Arbitration) Claim() (uint64, bool) {
	if a.lost || a.claim != 0 || a.held == 0 {
		return 0, false
	}
	a.claim = a.held + 1
	return a.claim, true
}

// Won records that the claim succeeded: the replica may act alone under
// the new generation.
func (a *Arbitration) Won(gen uint64) error {
	if gen != a.claim || gen == 0 {
		return fmt.Errorf("arbitration: won generation %d, but the claim under way is %d", gen, a.claim)
	}
	a.held, a.claim = gen, 0
	return nil
}

// Lost records that the claim failed (another replica holds the
// generation, or the arbiter could not be reached): the replica stops.
func (a *Arbitration) Lost(why error) {
	a.lost, a.claim = true, 0
	a.lostErr = why
}

// Claiming reports whether a claim is under way.
func (a *Arbitration) Claiming() bool { return a.claim != 0 }

// MayActAlone reports whether the replica holds the generation it last
// claimed, with no claim under way and none lost.
func (a *Arbitration) MayActAlone() bool { return !a.lost && a.claim == 0 && a.held != 0 }

// Stopped returns why the replica must stop, or nil.
func (a *Arbitration) Stopped() error {
	if !a.lost {
		return nil
	}
	return a.lostErr
}
