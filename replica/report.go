package replica

// Report is the JSON summary `hvft primary` and `hvft backup` write.
type Report struct {
	Role          string `json:"role"`
	Engine        string `json:"engine"` // libunicorn version
	BecamePrimary bool   `json:"became_primary"`
	Epochs        uint64 `json:"epochs"`
	// QuietEpochs counts the epochs run without the block clock
	// (--epoch-clock adaptive).
	QuietEpochs uint64 `json:"quiet_epochs"`
	FinalHash   string `json:"final_hash"`
	// ExitCode is the guest's power-off code, absent when the run did not
	// get there; a primary whose backup diverged has it beside Error.
	ExitCode       *int   `json:"exit_code"`
	OutputsEmitted uint64 `json:"outputs_emitted"`
	TLBMisses      uint64 `json:"tlb_misses"`
	HashesCompared uint64 `json:"hashes_compared,omitempty"`
	LogBytes       uint64 `json:"log_bytes,omitempty"`
	DiskWrites     uint64 `json:"disk_writes"`
	BackupLost     string `json:"backup_lost,omitempty"`
	// BackupFinalHash is the final hash the backup reported at the end of
	// a run it replayed to the end (primary only).
	BackupFinalHash string    `json:"backup_final_hash,omitempty"`
	Failover        *Failover `json:"failover,omitempty"`
	// Joins are the state transfers this replica served (as primary) or
	// received (as a joining backup).
	Joins      []Join `json:"joins,omitempty"`
	Divergence string `json:"divergence,omitempty"`
	Error      string `json:"error,omitempty"`
	DurationMS int64  `json:"duration_ms"`
}

// Failover is the timeline of a backup's takeover.
type Failover struct {
	Reason string `json:"reason"`
	// DetectedAfterMS is how long the primary had been silent when its
	// death was declared (0 for a closed link, about the timeout for a
	// silent death).
	DetectedAfterMS float64 `json:"detected_after_ms"`
	// DetectedUnixMS is the wall-clock time of detection.
	DetectedUnixMS int64 `json:"detected_unix_ms"`
	// EpochsHeld is the last complete epoch held at detection;
	// EpochsExecuted the last one executed then.
	EpochsHeld     uint64 `json:"epochs_held"`
	EpochsExecuted uint64 `json:"epochs_executed"`
	// ReplayMS runs from detection to going live (first answer from this
	// host's devices).
	ReplayMS    float64 `json:"replay_ms"`
	LiveUnixMS  int64   `json:"live_unix_ms,omitempty"`
	LiveAtEpoch uint64  `json:"live_at_epoch,omitempty"`
	LiveAtClock uint64  `json:"live_at_clock,omitempty"`
	Reemitted   int     `json:"reemitted"`
	// Nanosecond timestamps of detection and of going live, for
	// measuring kill-to-live against a kill's own clock.
	DetectedUnixNS int64 `json:"detected_unix_ns"`
	LiveUnixNS     int64 `json:"live_unix_ns,omitempty"`
	// Uncertain counts disk operations in flight at the takeover, completed
	// as uncertain for the guest to reissue.
	Uncertain uint64 `json:"uncertain"`
}

// Join is one state transfer to a joining backup.
type Join struct {
	AtEpoch uint64 `json:"at_epoch"` // the boundary the backup resumed from
	// PauseMS is how long the guest stood still for the stop-and-copy.
	PauseMS    float64 `json:"pause_ms"`
	PrecopyMS  float64 `json:"precopy_ms"`
	Bytes      uint64  `json:"bytes"`       // RAM bytes sent in all
	DirtyBytes uint64  `json:"dirty_bytes"` // of which re-sent at the stop
	Verified   bool    `json:"verified"`    // the backup reproduced the state hash
}
