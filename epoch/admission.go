package epoch

// Admission is rule 8, the primary's answer to a peer whose hello arrived:
// who may become its backup, and how. While the primary waits for its
// first backup (the guest has not started) a backup started without
// --join becomes it, one at a time: the first to confirm its welcome is
// the backup, and the caller lets the next candidate in only once the
// one before it has confirmed or gone. Once the guest runs, a backup
// joins by state transfer, and only while the primary has none.
type Admission struct {
	// AwaitingFirst: the primary waits for its first backup.
	AwaitingFirst bool
	// FirstTaken: a first backup has confirmed its welcome.
	FirstTaken bool
	// Busy: the primary has a backup, or one joining, or its run ended.
	Busy bool
}

// Admit decides a hello whose configuration differs from the primary's
// as mismatch says ("" when it matches), from a peer that asks to join a
// running primary or not. It returns the refusal to send ("" accepts) and
// whether an accepted peer becomes the first backup (else it joins).
func (a Admission) Admit(mismatch string, join bool) (refusal string, first bool) {
	switch {
	case mismatch != "":
		return mismatch, false
	case a.AwaitingFirst && join:
		return "the primary has not started the guest yet: start the backup without --join", false
	case a.AwaitingFirst && a.FirstTaken:
		return "the primary already has a backup", false
	case a.AwaitingFirst:
		return "", true
	case !join:
		return "the primary is already running: start the backup with --join", false
	case a.Busy:
		return "the primary already has a backup (or one joining)", false
	}
	return "", false
}
