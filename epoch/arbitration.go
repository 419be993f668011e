package epoch

import (
	"errors"
	"fmt"
)

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

// ErrClaimLost is the arbiter's answer that a claim failed: its register
// holds something other than the generation before the one claimed.
// Errors that wrap it are definite; a *LostClaim says what the register
// holds.
var ErrClaimLost = errors.New("another replica holds that generation")

// ErrClaimUnknown is a claim whose answer was lost and whose outcome
// could not be read back: it may have landed or not. The replica does not
// act alone on it (rule 7: safety before availability).
var ErrClaimUnknown = errors.New("the claim's outcome is unknown")

// Register is the arbiter's register as read: the generation and the
// replica recorded as its holder, which the compare-and-swap writes
// together.
type Register struct {
	Gen    uint64
	Holder string
}

// LostClaim is a claim of generation Claimed that the register does not
// record for the claimant: it holds Register instead. It wraps
// ErrClaimLost.
type LostClaim struct {
	Claimed uint64
	Register
}

func (e *LostClaim) Error() string {
	holder := e.Holder
	if holder == "" {
		holder = "no one named"
	}
	switch {
	case e.Gen == e.Claimed:
		return fmt.Sprintf("generation %d is held by %s", e.Gen, holder)
	case e.Gen > e.Claimed:
		return fmt.Sprintf("the register moved past generation %d: generation %d is held by %s", e.Claimed, e.Gen, holder)
	case e.Gen+1 == e.Claimed:
		return fmt.Sprintf("the claim of generation %d did not land: the register still holds generation %d, held by %s", e.Claimed, e.Gen, holder)
	}
	return fmt.Sprintf("generation %d cannot be claimed: the register holds generation %d, held by %s", e.Claimed, e.Gen, holder)
}

// Unwrap makes a LostClaim an ErrClaimLost.
func (e *LostClaim) Unwrap() error { return ErrClaimLost }

// ClaimAnswered reports whether err is the arbiter's answer to a claim:
// won (nil) or lost (ErrClaimLost). Any other error (a timeout, a broken
// connection, a failed write) leaves the outcome open: the
// compare-and-swap may have landed with only its answer lost, and
// SettleClaim decides it from the register read back.
func ClaimAnswered(err error) bool { return err == nil || errors.Is(err, ErrClaimLost) }

// SettleClaim decides a claim of generation gen by holder self whose
// answer was lost (claimErr), from the register read back after it (reg,
// or readErr if it could not be read). The holder is written with the
// generation in one compare-and-swap, so the register says who won: this
// replica won if it is recorded as the holder of exactly gen. Otherwise
// it lost, and the result names who holds what. A register that could not
// be read leaves the outcome unknown: the replica must not act alone (it
// may have lost), and says so. A replica with no name cannot recognise
// itself in the register, so its outcome is unknown too.
func SettleClaim(gen uint64, self string, claimErr error, reg Register, readErr error) error {
	switch {
	case readErr != nil:
		return fmt.Errorf("%w: the answer to the claim of generation %d was lost (%v), and the register could not be read back (%v)",
			ErrClaimUnknown, gen, claimErr, readErr)
	case self == "":
		return fmt.Errorf("%w: the answer to the claim of generation %d was lost (%v), and this replica has no holder name to find in the register",
			ErrClaimUnknown, gen, claimErr)
	case reg.Gen == gen && reg.Holder == self:
		return nil
	}
	return &LostClaim{Claimed: gen, Register: reg}
}
