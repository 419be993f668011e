// Package replica wires hvft's replication protocol (package epoch) to the
// machine (package vm) and the network: a TCP link with a handshake,
// heartbeats and a failure detector, the primary and backup roles, output
// release, and failover. Protocol rules live in epoch; this package only
// carries them out.
package replica

import (
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"hvft/epoch"
	"hvft/vm"
	"hvft/vm/guestelf"
	"hvft/vm/linux"
	"hvft/vm/uc"
)

// Machine describes the guest and machine both replicas run.
type Machine struct {
	Image       *guestelf.Image
	Config      vm.Config // Config.Args includes the guest's argv[0]
	EpochBlocks uint64
	// DiskPath names the shared disk image (Config.DiskSectors its size).
	// Only the primary opens it; a backup opens it when it takes over.
	DiskPath string
	DiskSync vm.DiskSync
	// DiskID is the image's identity (identifyDisk), compared at the
	// handshake.
	DiskID vm.DiskID
	// ConsolePath is the shared --console-out file, if any: the
	// handshake compares its identity on this host.
	ConsolePath string
	// Root is the host directory a Linux program (Config.Linux) sees as
	// "/"; the live side performs its file requests there. ProgramPath
	// is the host file the program was loaded from.
	Root        string
	ProgramPath string
	// JournalDir holds the journal of a replicated Linux program's last
	// unrepeatable call (docs/linux.md); both replicas name the same one.
	// Empty: Root.
	JournalDir string
	// ArbiterID is the run's arbiter's identity (arbiterIdentity), set by
	// RunPrimary and RunBackup before the handshake.
	ArbiterID string
}

// linuxHost returns the host a Linux program's live side performs its
// requests on, or nil for a board guest.
func (m Machine) linuxHost(stdin, random io.Reader) (*linux.Host, error) {
	if m.Config.Linux == nil {
		return nil, nil
	}
	if random == nil {
		random = rand.Reader
	}
	root := m.Root
	if root == "" {
		root = "/"
	}
	h, err := linux.NewHost(root, stdin, random)
	if err != nil {
		return nil, err
	}
	h.JournalDir = m.JournalDir
	return h, nil
}

// openDisk opens the shared disk, if the machine has one.
func (m Machine) openDisk() (*vm.HostDisk, error) {
	if m.DiskPath == "" {
		return nil, nil
	}
	d, err := vm.OpenDisk(m.DiskPath, m.DiskSync)
	if err != nil {
		return nil, err
	}
	if d.Sectors() != m.Config.DiskSectors {
		d.Close()
		return nil, fmt.Errorf("disk image %s has %d sectors now, %d at start", m.DiskPath, d.Sectors(), m.Config.DiskSectors)
	}
	return d, nil
}

// identifyDisk reads (or gives) the shared disk its identity, which the
// handshake compares; it never touches the image's contents.
func (m *Machine) identifyDisk() error {
	if m.DiskPath == "" {
		return nil
	}
	id, err := vm.DiskIdentity(m.DiskPath)
	if err != nil {
		return err
	}
	m.DiskID = id
	return nil
}

// consoleFileID names the console file at path on this host: host name,
// device and inode ("HOST:absent" when there is no such file yet). Across
// hosts it proves nothing, and is not compared. Disk images, roots and
// journal directories are named the same way (fileID).
func consoleFileID(path string) string { return fileID(path) }

func fileID(path string) string {
	if path == "" {
		return ""
	}
	host, _ := os.Hostname()
	host = strings.ReplaceAll(host, ":", "_")
	if abs, err := filepath.Abs(path); err == nil {
		path = abs
	}
	// The path after "@" is for messages only.
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return host + ":absent@" + path
	}
	return fmt.Sprintf("%s:%d:%d@%s", host, st.Dev, st.Ino, path)
}

// fenceToken is the disk fence's token for generation gen of the run
// named at arb.
func fenceToken(arb Generations, gen uint64) vm.FenceToken {
	t := vm.FenceToken{Gen: gen}
	sum := sha256.Sum256([]byte(arb.RunName()))
	copy(t.Run[:], sum[:])
	return t
}

// wireConfig is what the handshake compares.
func (m Machine) wireConfig() epoch.MachineConfig {
	h := sha256.New()
	for _, a := range m.Config.Args {
		fmt.Fprintf(h, "%d:%s", len(a), a)
	}
	if l := m.Config.Linux; l != nil {
		// A Linux program's environment, path and directory are part of
		// what it computes from.
		fmt.Fprintf(h, "linux:%d:%s:%d:%s:%d:%d:%d", len(l.Process.Exe), l.Process.Exe, len(l.Process.Cwd), l.Process.Cwd,
			l.Process.UID, l.Process.GID, len(l.Process.Env))
		for _, e := range l.Process.Env {
			fmt.Fprintf(h, "%d:%s", len(e), e)
		}
	}
	var args [32]byte
	copy(args[:], h.Sum(nil))
	return epoch.MachineConfig{
		ImageDigest:    m.Image.Digest,
		ArgsDigest:     args,
		RAMSize:        m.Config.RAMSize,
		EpochBlocks:    m.EpochBlocks,
		BoardVersion:   vm.BoardVersion,
		Engine:         uc.Version(),
		DiskSectors:    m.Config.DiskSectors,
		DiskID:         m.DiskID,
		Console:        consoleFileID(m.ConsolePath),
		Clock:          m.Config.Clock.String(),
		Arbiter:        m.ArbiterID,
		DiskFile:       fileID(m.DiskPath),
		Root:           m.linuxDir(m.Root),
		Journal:        m.linuxDir(m.journalDir()),
		JournalVersion: linux.JournalVersion,
	}
}

// linuxDir names dir on this host for a Linux program's machine, and
// nothing for a board guest.
func (m Machine) linuxDir(dir string) string {
	if m.Config.Linux == nil {
		return ""
	}
	if dir == "" {
		dir = "/"
	}
	return fileID(dir)
}

// journalDir is where the journal lives: JournalDir, or the root.
func (m Machine) journalDir() string {
	if m.JournalDir != "" {
		return m.JournalDir
	}
	return m.Root
}

// compareConfigs explains why a backup's configuration cannot replicate
// the primary's, or returns "" when it can. adoptable says the primary's
// arbiter is a default one a backup given none adopts from the welcome.
func compareConfigs(primary, backup epoch.MachineConfig, adoptable bool) string {
	var why []string
	if primary.ImageDigest != backup.ImageDigest {
		why = append(why, fmt.Sprintf("guest image differs (primary %x..., backup %x...)", primary.ImageDigest[:6], backup.ImageDigest[:6]))
	}
	if primary.ArgsDigest != backup.ArgsDigest {
		why = append(why, "guest arguments differ")
	}
	if primary.RAMSize != backup.RAMSize {
		why = append(why, fmt.Sprintf("RAM size differs (primary %d, backup %d)", primary.RAMSize, backup.RAMSize))
	}
	if primary.EpochBlocks != backup.EpochBlocks {
		why = append(why, fmt.Sprintf("epoch length differs (primary %d, backup %d blocks)", primary.EpochBlocks, backup.EpochBlocks))
	}
	if primary.Engine != backup.Engine {
		why = append(why, fmt.Sprintf("emulator library differs (primary libunicorn %s, backup %s): their epoch clocks disagree", primary.Engine, backup.Engine))
	}
	if primary.Clock != backup.Clock {
		why = append(why, fmt.Sprintf("epoch clock differs (primary %s, backup %s)", primary.Clock, backup.Clock))
	}
	if primary.DiskSectors != backup.DiskSectors {
		why = append(why, fmt.Sprintf("disk size differs (primary %d, backup %d sectors)", primary.DiskSectors, backup.DiskSectors))
	}
	if primary.DiskID != backup.DiskID {
		why = append(why, "the disk images are different files (their fence files' identities differ): both replicas must name the same shared image")
	}
	for _, f := range []struct{ primary, backup, what string }{
		{primary.Console, backup.Console, "the console files are different files on this host: --console-out must name the one file both replicas share"},
		{primary.DiskFile, backup.DiskFile, "the disk images are different files on this host (a copy is not the shared disk): --disk must name the one image both replicas share"},
		{primary.Root, backup.Root, "the roots are different directories on this host: --root must name the one directory both replicas share"},
		{primary.Journal, backup.Journal, "the journal directories are different directories on this host: --journal-dir (or --root) must name the one directory both replicas share"},
	} {
		if differentOnThisHost(f.primary, f.backup) {
			why = append(why, fmt.Sprintf("%s (primary %s, backup %s)", f.what, filePath(f.primary), filePath(f.backup)))
		}
	}
	switch {
	case primary.Arbiter == backup.Arbiter:
	case backup.Arbiter == "" && adoptable:
		// The backup adopts the primary's default arbiter (the welcome
		// names it).
	case backup.Arbiter == "":
		why = append(why, fmt.Sprintf("the primary arbitrates at %s, this backup at none: give it the same --arbiter", arbiterName(primary.Arbiter)))
	case primary.Arbiter == "":
		why = append(why, fmt.Sprintf("this backup arbitrates at %s, the primary at none: give both replicas the same --arbiter", arbiterName(backup.Arbiter)))
	default:
		why = append(why, fmt.Sprintf("the arbiters differ (primary %s, backup %s): both replicas must name the same --arbiter, and one another run left behind does not match", primary.Arbiter, backup.Arbiter))
	}
	if primary.JournalVersion != backup.JournalVersion {
		why = append(why, fmt.Sprintf("journal version differs (primary %d, backup %d): a takeover could not read the journal", primary.JournalVersion, backup.JournalVersion))
	}
	if primary.BoardVersion != backup.BoardVersion {
		why = append(why, fmt.Sprintf("board version differs (primary %d, backup %d)", primary.BoardVersion, backup.BoardVersion))
	}
	return strings.Join(why, "; ")
}

// wireOutput describes a machine output to the protocol.
func wireOutput(o vm.Output) epoch.Output {
	w := epoch.Output{Seq: o.Seq, Epoch: o.At.Epoch, Answers: o.Answers, Port: o.Port, Value: o.Value}
	if o.Disk == nil && o.Data != nil {
		w.Data = o.Data // a Linux program's standard output or error
	}
	if o.Disk != nil {
		w.Kind, w.Ref = epoch.DiskWrite, o
	}
	return w
}

// consoleOnly keeps the console outputs of a release.
func consoleOnly(outs []epoch.Output) []epoch.Output {
	var c []epoch.Output
	for _, o := range outs {
		if o.Kind == epoch.Console {
			c = append(c, o)
		}
	}
	return c
}

// differentOnThisHost reports whether two fileIDs name different files on
// one host. A file absent on either side proves nothing (the backup may
// have looked before the primary created it), nor do two hosts.
func differentOnThisHost(a, b string) bool {
	a, _, _ = strings.Cut(a, "@")
	b, _, _ = strings.Cut(b, "@")
	p, q := strings.SplitN(a, ":", 2), strings.SplitN(b, ":", 2)
	return len(p) == 2 && len(q) == 2 && p[0] == q[0] && p[1] != q[1] && p[1] != "absent" && q[1] != "absent"
}

// arbiterName is an arbiter's identity without its nonce, for messages.
func arbiterName(id string) string {
	name, _, _ := strings.Cut(id, "#")
	return name
}

// ProofPath is the file beside a shared disk image where a primary writes
// a fresh token before it welcomes a backup.
func ProofPath(image string) string { return image + ".hvft-proof" }

func (m Machine) proofPath() string {
	if m.DiskPath == "" {
		return ""
	}
	return ProofPath(m.DiskPath)
}

// writeProof writes a fresh token beside the shared disk image (replacing
// the file whole, so that a reader sees the old token or the new one) and
// returns it ("" without a disk). A backup that reads another token there
// names another image: device and inode numbers prove that only on one
// host, the token on any storage both replicas share.
func (m Machine) writeProof() (string, error) {
	path := m.proofPath()
	if path == "" {
		return "", nil
	}
	token, err := newNonce()
	if err != nil {
		return "", err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".hvft-proof-*")
	if err != nil {
		return "", fmt.Errorf("writing %s: %w", path, err)
	}
	_, werr := tmp.WriteString(token)
	if err := errors.Join(werr, tmp.Sync(), tmp.Close()); err != nil {
		os.Remove(tmp.Name())
		return "", fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return "", fmt.Errorf("writing %s: %w", path, err)
	}
	return token, nil
}

// checkProof compares the token beside this replica's disk image with
// the one the primary wrote beside its own.
func (m Machine) checkProof(token string) error {
	path := m.proofPath()
	if path == "" || token == "" {
		return nil
	}
	got, err := os.ReadFile(path)
	if err != nil || string(got) != token {
		return fmt.Errorf("the disk image %s is not the primary's: the token the primary just wrote beside its image is not beside this one (a copy, or a file on another host's storage); both replicas must name the one shared image", m.DiskPath)
	}
	return nil
}

// filePath is the path a fileID was made from.
func filePath(id string) string {
	_, path, _ := strings.Cut(id, "@")
	return path
}
