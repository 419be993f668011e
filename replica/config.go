// Package replica wires hvft's replication protocol (package epoch) to the
// machine (package vm) and the network: a TCP link with a handshake,
// heartbeats and a failure detector, the primary and backup roles, output
// release, and failover. Protocol rules live in epoch; this package only
// carries them out.
package replica

import (
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
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
// hosts it proves nothing, and is not compared.
func consoleFileID(path string) string {
	if path == "" {
		return ""
	}
	host, _ := os.Hostname()
	host = strings.ReplaceAll(host, ":", "_")
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return host + ":absent"
	}
	return fmt.Sprintf("%s:%d:%d", host, st.Dev, st.Ino)
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
		ImageDigest:  m.Image.Digest,
		ArgsDigest:   args,
		RAMSize:      m.Config.RAMSize,
		EpochBlocks:  m.EpochBlocks,
		BoardVersion: vm.BoardVersion,
		Engine:       uc.Version(),
		DiskSectors:  m.Config.DiskSectors,
		DiskID:       m.DiskID,
		Console:      consoleFileID(m.ConsolePath),
		Clock:        m.Config.Clock.String(),
	}
}

// compareConfigs explains why a backup's configuration cannot replicate
// the primary's, or returns "" when it can.
func compareConfigs(primary, backup epoch.MachineConfig) string {
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
	// A file absent on either side proves nothing: the backup may have
	// looked before the primary created it.
	if p, b := strings.SplitN(primary.Console, ":", 2), strings.SplitN(backup.Console, ":", 2); len(p) == 2 && len(b) == 2 &&
		p[0] == b[0] && p[1] != b[1] && p[1] != "absent" && b[1] != "absent" {
		why = append(why, "the console files are different files on this host: --console-out must name the one file both replicas share")
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
