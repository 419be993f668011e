package replica

import (
	"strconv"

	"hvft/epoch"
	"hvft/vm"
	"hvft/vm/linux"
	"hvft/vm/uc"
)

// FormatVersion is one protocol or format this build speaks: its version,
// what it covers, and where a peer, a file or a guest of another version
// is refused. Versions is the one table of them (hvft version).
type FormatVersion struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	Covers  string `json:"covers"`
	Refused string `json:"refused"`
}

// Versions lists every version this build checks.
func Versions() []FormatVersion {
	n := func(v uint32) string { return strconv.FormatUint(uint64(v), 10) }
	return []FormatVersion{
		{"wire", n(epoch.Version), "the replication link's frames and messages (package epoch)",
			"every frame (\"protocol version N, this build speaks M\"): the hello of a peer of another version fails the handshake"},
		{"log", n(logVersion), "a --record log file's header and its frames' meaning",
			"reading a log (hvft replay): \"log version N, this build reads M\""},
		{"board", n(vm.BoardVersion), "the guest's port map, device behaviour and boot state, x87/SSE included (docs/board.md)",
			"the handshake (\"board version differs\") and hvft replay (the log's header names it)"},
		{"snapshot", n(vm.SnapshotVersion), "the machine's state in a joining backup's state transfer",
			"the joining backup's restore: \"snapshot version N: this build reads version M\""},
		{"boot-info", n(vm.BootInfoVersion), "the boot information block a board guest reads at boot",
			"by nobody yet: the built-in guests are built with this build; a guest may check the block's version field"},
		{"journal", n(linux.JournalVersion), "the journal of a replicated Linux program's last unrepeatable call (vm/linux/journal.go, docs/linux.md)",
			"the handshake (\"journal version differs\"), and a backup taking over, as it goes live and before it answers anything (\"taking over: journal FILE, the intent at offset 0: journal version N, this build reads version M\")"},
		{"engine", uc.Version(), "the emulator library: block boundaries, and so epochs, differ between versions",
			"the handshake (\"emulator library differs\") and hvft replay (the log's header names it)"},
	}
}
