package vm

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// A disk image's fence file sits beside it (IMAGE + FenceSuffix), on the
// same storage, and holds what the image cannot without changing what the
// guest sees:
//
//   - an identity, made once at random, that the replicas' handshake
//     compares: two replicas that name different image files are refused
//     instead of each writing its own;
//   - the token of the replica allowed to write: a run name and a
//     generation (rule 7's). A replica that wins a generation raises the
//     fence before its first write; a write whose token is not the
//     fence's is refused. The check and the write happen under a shared
//     flock(2) of the fence file and the raise under an exclusive one, so
//     a write of the old generation either lands before the fence goes up
//     or not at all: it can never land after the new primary wrote.
//
// Layout: magic (8) | identity (16) | run (16) | generation (8).
const FenceSuffix = ".fence"

var fenceMagic = []byte("hvftfnc1")

const (
	fenceSize      = 48
	fenceTokenAt   = 24
	fenceTokenSize = 24
)

// DiskID is a disk image's identity (its fence file's).
type DiskID [16]byte

// FenceToken names the replica allowed to write: Run is a digest of the
// run's name at its arbiter, Gen the generation it won there.
type FenceToken struct {
	Run [16]byte
	Gen uint64
}

// ErrStaleGeneration means a write or a raise carried a token older than
// the disk's fence: a newer primary owns the disk.
var ErrStaleGeneration = errors.New("the disk is fenced by a newer generation")

// FencePath is the fence file of the image at path.
func FencePath(image string) string { return image + FenceSuffix }

// DiskIdentity returns the identity of the image at path, creating its
// fence file when it has none. Two replicas racing to create it get the
// same one: the file appears complete or not at all (link(2) of a
// finished temporary file).
func DiskIdentity(image string) (DiskID, error) {
	path := FencePath(image)
	for {
		id, err := readDiskID(path)
		if !errors.Is(err, os.ErrNotExist) {
			return id, err
		}
		if err := createFence(path); err != nil && !errors.Is(err, os.ErrExist) {
			return DiskID{}, fmt.Errorf("disk image %s: creating its fence file beside it: %w", image, err)
		}
	}
}

func readDiskID(path string) (DiskID, error) {
	f, err := os.Open(path)
	if err != nil {
		return DiskID{}, err
	}
	defer f.Close()
	buf := make([]byte, fenceSize)
	if _, err := io.ReadFull(f, buf); err != nil || !bytes.Equal(buf[:8], fenceMagic) {
		return DiskID{}, fmt.Errorf("%s is not an hvft fence file (remove it only if no replica of this disk runs)", path)
	}
	var id DiskID
	copy(id[:], buf[8:24])
	return id, nil
}

func createFence(path string) error {
	buf := make([]byte, fenceSize)
	copy(buf, fenceMagic)
	if _, err := rand.Read(buf[8:24]); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".fence-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	if _, err := tmp.Write(buf); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	return os.Link(tmp.Name(), path)
}

func readToken(f *os.File) (FenceToken, error) {
	var buf [fenceTokenSize]byte
	if _, err := f.ReadAt(buf[:], fenceTokenAt); err != nil {
		return FenceToken{}, fmt.Errorf("reading the disk's fence: %w", err)
	}
	var t FenceToken
	copy(t.Run[:], buf[:16])
	t.Gen = binary.LittleEndian.Uint64(buf[16:])
	return t, nil
}

func flock(f *os.File, how int) error {
	for {
		err := syscall.Flock(int(f.Fd()), how)
		if !errors.Is(err, syscall.EINTR) {
			return err
		}
	}
}

// Claim raises the disk's fence to t and makes t this handle's token: from
// now on a write of any other token is refused, and so are this handle's
// writes once a newer token raises the fence. It waits for a write of an
// older token in progress to finish (a process stopped inside one holds
// the claim up: safe, and bounded by ctx). A token older than the fence
// (the same run, a lower generation) is refused with ErrStaleGeneration.
func (d *HostDisk) Claim(ctx context.Context, t FenceToken) error {
	f, err := os.OpenFile(FencePath(d.path), os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("disk image %s: opening its fence: %w", d.path, err)
	}
	defer f.Close()
	began := time.Now()
	for wait := 50 * time.Microsecond; ; wait = min(2*wait, 10*time.Millisecond) {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			return fmt.Errorf("disk image %s: locking its fence: %w", d.path, err)
		}
		if time.Since(began) > stoppedWriterGrace {
			d.killStoppedWriters(f)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("disk image %s: waiting for a write of an older generation to finish: %w", d.path, ctx.Err())
		case <-time.After(wait):
		}
	}
	cur, err := readToken(f)
	if err == nil && cur.Run == t.Run && cur.Gen > t.Gen {
		err = fmt.Errorf("disk image %s: generation %d claimed, the fence holds %d: %w", d.path, t.Gen, cur.Gen, ErrStaleGeneration)
	}
	if err == nil {
		var buf [fenceTokenSize]byte
		copy(buf[:16], t.Run[:])
		binary.LittleEndian.PutUint64(buf[16:], t.Gen)
		if _, werr := f.WriteAt(buf[:], fenceTokenAt); werr != nil {
			err = fmt.Errorf("disk image %s: raising its fence: %w", d.path, werr)
		} else if serr := f.Sync(); serr != nil {
			err = fmt.Errorf("disk image %s: raising its fence: %w", d.path, serr)
		}
	}
	if err == nil {
		// This disk's own writes take the new token before the lock is
		// released: a write of this replica's that waited for the claim
		// must not find the fence raised past the token it holds.
		d.mu.Lock()
		if d.fence == nil {
			if d.fence, err = os.Open(FencePath(d.path)); err != nil {
				err = fmt.Errorf("disk image %s: opening its fence: %w", d.path, err)
			}
		}
		if err == nil {
			d.token = t
		}
		d.mu.Unlock()
	}
	flock(f, syscall.LOCK_UN)
	return err
}

// stoppedWriterGrace is how long a claim waits for a write under way
// before it looks for a stopped process holding it up.
const stoppedWriterGrace = 500 * time.Millisecond

// killStoppedWriters kills every other process that holds a lock on the
// fence file f and is stopped (SIGSTOP, a debugger): it holds a write of
// an older generation half done, and would hold this claim, and so the
// run, up for as long as it stays stopped. Killing it is the fence (the
// write it had under way is dropped with it); a holder that runs is left
// to finish. Found through /proc/locks, so only on this host: a holder
// elsewhere (a network file system) is waited for.
func (d *HostDisk) killStoppedWriters(f *os.File) {
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		return
	}
	locks, err := os.ReadFile("/proc/locks")
	if err != nil {
		return
	}
	// "1: FLOCK  ADVISORY  READ  1234 08:01:5678 0 EOF": the file is
	// major:minor (hex) and inode.
	file := fmt.Sprintf("%02x:%02x:%d", devMajor(st.Dev), devMinor(st.Dev), st.Ino)
	for _, line := range strings.Split(string(locks), "\n") {
		fields := strings.Fields(line)
		if len(fields) < 6 || fields[1] != "FLOCK" || fields[5] != file {
			continue
		}
		pid, err := strconv.Atoi(fields[4])
		if err != nil || pid <= 0 || pid == os.Getpid() || !processStopped(pid) {
			continue
		}
		if syscall.Kill(pid, syscall.SIGKILL) == nil {
			d.mu.Lock()
			notice := d.notice
			d.mu.Unlock()
			if notice != nil {
				notice(fmt.Sprintf("killed process %d: it was stopped holding a write of an older generation on disk image %s", pid, d.path))
			}
		}
	}
}

// processStopped reports whether pid is in the stopped (or traced) state.
func processStopped(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// "pid (comm) S ...": the state follows the last ')'.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 || i+2 >= len(stat) {
		return false
	}
	return stat[i+2] == 'T' || stat[i+2] == 't'
}

// devMajor and devMinor split a device number as glibc encodes it.
func devMajor(dev uint64) uint64 { return (dev>>8)&0xfff | (dev>>32)&^0xfff }
func devMinor(dev uint64) uint64 { return dev&0xff | (dev>>12)&^0xff }

// fencedWrite writes data at off if this handle's token is still the
// fence's. It holds a shared lock across the check and the write, which a
// raise waits out; the fsync that follows needs no lock.
func (d *HostDisk) fencedWrite(data []byte, off int64) error {
	d.mu.Lock()
	f := d.fence
	d.mu.Unlock()
	if f == nil {
		_, err := d.f.WriteAt(data, off)
		return err
	}
	if err := flock(f, syscall.LOCK_SH); err != nil {
		return fmt.Errorf("locking the disk's fence: %w", err)
	}
	defer flock(f, syscall.LOCK_UN)
	// The token is read under the lock: a claim of this disk's own (the
	// primary going on alone) may have raised the fence while this write
	// waited, and this write is then of the new generation.
	d.mu.Lock()
	mine := d.token
	d.mu.Unlock()
	if d.beforeWrite != nil {
		d.beforeWrite()
	}
	cur, err := readToken(f)
	if err != nil {
		return err
	}
	if cur != mine {
		return fmt.Errorf("write of generation %d refused, the fence holds generation %d: %w", mine.Gen, cur.Gen, ErrStaleGeneration)
	}
	_, err = d.f.WriteAt(data, off)
	return err
}
