package linux

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"time"
)

// Op names a request the personality makes of the outside world.
type Op uint8

// Requests. Each is stateless on the host (a path and an offset, never a
// host descriptor), so that a backup that goes live can perform the next
// one without having performed the earlier ones.
const (
	OpOpen     Op = 1  // Path, Flags, Mode: open (creating, truncating) and stat it
	OpRead     Op = 2  // Path, Off, Size: the bytes at Off
	OpStdin    Op = 3  // Size: the next bytes of standard input
	OpWrite    Op = 4  // Path, Off, Data: write at Off (Flags&oAppend: at the end)
	OpStat     Op = 5  // Path, Flags (atSymlinkNofoll): struct stat
	OpStdStat  Op = 6  // Flags = fd 0..2: struct stat of the host's own descriptor
	OpReadDir  Op = 7  // Path, Off (entry index), Size: linux_dirent64 records
	OpReadlink Op = 8  // Path: the link's target
	OpUnlink   Op = 9  // Path, Flags (atRemoveDir)
	OpRename   Op = 10 // Path -> Path2
	OpMkdir    Op = 11 // Path, Mode
	OpTruncate Op = 12 // Path, Off: the new length
	OpClock    Op = 13 // Flags = clock id: nanoseconds
	OpRandom   Op = 14 // Size: random bytes
	OpAccess   Op = 15 // Path, Mode
	OpTSC      Op = 16 // the time-stamp counter (RDTSC, RDTSCP)
	OpSync     Op = 17 // Path: fsync
	OpChmod    Op = 18 // Path, Mode
	OpChown    Op = 19 // Path, Off = uid, Size = gid (-1: unchanged), Flags (atSymlinkNofoll)
	OpUtimes   Op = 20 // Path, Data = two timespecs (UTIME_NOW, UTIME_OMIT), Flags (atSymlinkNofoll)
	OpSymlink  Op = 21 // Path2 (the target) at Path
	OpLink     Op = 22 // Path -> Path2
	OpSleep    Op = 23 // Off: nanoseconds to let pass
)

// Commits reports whether c changes the outside world in a way the
// program waits on: in a replicated run it is performed only once the
// backup holds every earlier answer (rule 3b, docs/linux.md).
func (c Call) Commits() bool {
	switch c.Op {
	case OpWrite, OpUnlink, OpRename, OpMkdir, OpTruncate, OpChmod, OpChown, OpUtimes, OpSymlink, OpLink:
		return true
	case OpOpen:
		return c.Flags&(oCreat|oTrunc) != 0
	}
	return false
}

// repeatable reports whether performing c a second time leaves the world
// as once did, with the same result. A failover may re-execute the last
// committing call; one that is not repeatable is journaled (journal.go).
// An open is not repeatable only with both O_CREAT and O_EXCL: Linux
// ignores O_EXCL without O_CREAT, and such an open does not commit, so it
// may run ahead of the backup, where no journal record may be written
// (a replica re-executing from an earlier answer could reach its sequence
// number with another call).
func (c Call) repeatable() bool {
	switch c.Op {
	case OpUnlink, OpRename, OpMkdir, OpSymlink, OpLink:
		return false
	case OpOpen:
		return c.Flags&(oCreat|oExcl) != oCreat|oExcl
	}
	return true
}

var opNames = map[Op]string{OpOpen: "open", OpRead: "read", OpStdin: "stdin", OpWrite: "write", OpStat: "stat",
	OpStdStat: "std-stat", OpReadDir: "readdir", OpReadlink: "readlink", OpUnlink: "unlink", OpRename: "rename",
	OpMkdir: "mkdir", OpTruncate: "truncate", OpClock: "clock", OpRandom: "random", OpAccess: "access", OpTSC: "tsc",
	OpSync: "sync", OpChmod: "chmod", OpChown: "chown", OpUtimes: "utimes", OpSymlink: "symlink", OpLink: "link", OpSleep: "sleep"}

func (o Op) String() string {
	if n, ok := opNames[o]; ok {
		return n
	}
	return fmt.Sprintf("op(%d)", uint8(o))
}

// Call is one request; paths are the program's own (absolute, cleaned),
// which the Host resolves under its root.
type Call struct {
	Op    Op
	Path  string
	Path2 string
	Flags uint64
	Mode  uint32
	Off   int64
	Size  uint64
	Data  []byte
}

// Result is a request's answer: Value is the system call's result (a
// negated errno on failure), Data its bytes.
type Result struct {
	Value int64
	Data  []byte
}

// TSCHz is the rate of the time-stamp counter a program reads.
const TSCHz = 3_000_000_000

// MaxTransfer bounds the bytes one request moves: a larger read is cut
// short, as Linux may do. An answer travels in one protocol frame (at most
// epoch.MaxFrame, 1 MiB), with room to spare.
const MaxTransfer = 256 << 10

// Host performs requests on the live side: files under Root, the host's
// standard input, clock and random source.
type Host struct {
	Root   string
	Stdin  io.Reader
	Random io.Reader
	Now    func() time.Time

	mu    sync.Mutex
	files map[string]*os.File

	// The journal of the last call that is not repeatable (replicated
	// runs): its sequence number, and whether it completed, with what.
	// It lives in JournalDir (the root when empty).
	JournalDir string
	journaled  bool
	runID      string
	journal    *os.File
}

// NewHost returns a Host over root. A nil stdin reads as empty.
func NewHost(root string, stdin, random io.Reader) (*Host, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("root %q: %w", root, err)
	}
	st, err := os.Stat(abs)
	if err != nil {
		return nil, fmt.Errorf("root: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("root %s is not a directory", abs)
	}
	return &Host{Root: abs, Stdin: stdin, Random: random, Now: time.Now, files: map[string]*os.File{}}, nil
}

// SkipStdin discards the first n bytes of standard input: a backup taking
// over was given the same input as the primary it replaces, which
// consumed (and logged) that much of it.
func (h *Host) SkipStdin(n uint64) error {
	if n == 0 || h.Stdin == nil {
		return nil
	}
	got, err := io.CopyN(io.Discard, h.Stdin, int64(n))
	if err != nil {
		return fmt.Errorf("standard input: the old primary read %d bytes, this replica's has %d: %w", n, got, err)
	}
	return nil
}

// Close releases the host files held open.
func (h *Host) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.journal != nil {
		h.journal.Close()
		h.journal = nil
	}
	var first error
	for p, f := range h.files {
		if err := f.Close(); err != nil && first == nil {
			first = err
		}
		delete(h.files, p)
	}
	return first
}

// hostPath maps a program path under the root; ".." cannot climb out.
func (h *Host) hostPath(p string) string {
	return filepath.Join(h.Root, filepath.FromSlash(path.Clean("/"+p)))
}

// Do performs c.
func (h *Host) Do(c Call) Result {
	switch c.Op {
	case OpOpen:
		return h.open(c)
	case OpRead:
		f, err := h.file(c.Path, false)
		if err != nil {
			return fail(err)
		}
		buf := make([]byte, min(c.Size, MaxTransfer))
		n, err := f.ReadAt(buf, c.Off)
		if err != nil && !errors.Is(err, io.EOF) {
			return fail(err)
		}
		return Result{Value: int64(n), Data: buf[:n]}
	case OpStdin:
		if h.Stdin == nil {
			return Result{}
		}
		buf := make([]byte, min(c.Size, MaxTransfer))
		n, err := h.Stdin.Read(buf)
		if err != nil && !errors.Is(err, io.EOF) && n == 0 {
			return fail(err)
		}
		return Result{Value: int64(n), Data: buf[:n]}
	case OpWrite:
		f, err := h.file(c.Path, true)
		if err != nil {
			return fail(err)
		}
		n, err := f.WriteAt(c.Data, c.Off)
		if err != nil && n == 0 {
			return fail(err)
		}
		return Result{Value: int64(n)}
	case OpStat:
		var st syscall.Stat_t
		var err error
		if c.Flags&atSymlinkNofoll != 0 {
			err = syscall.Lstat(h.hostPath(c.Path), &st)
		} else {
			err = syscall.Stat(h.hostPath(c.Path), &st)
		}
		if err != nil {
			return fail(err)
		}
		return Result{Data: encodeStat(&st)}
	case OpStdStat:
		var st syscall.Stat_t
		if c.Flags > 2 {
			return Result{Value: -EBADF}
		}
		if err := syscall.Fstat(int(c.Flags), &st); err != nil {
			return fail(err)
		}
		return Result{Data: encodeStat(&st)}
	case OpReadDir:
		return h.readDir(c)
	case OpReadlink:
		t, err := os.Readlink(h.hostPath(c.Path))
		if err != nil {
			return fail(err)
		}
		return Result{Value: int64(len(t)), Data: []byte(t)}
	case OpUnlink:
		var err error
		if c.Flags&atRemoveDir != 0 {
			err = syscall.Rmdir(h.hostPath(c.Path))
		} else {
			err = syscall.Unlink(h.hostPath(c.Path))
		}
		h.forget(c.Path)
		return done(err)
	case OpRename:
		h.forget(c.Path)
		h.forget(c.Path2)
		return done(syscall.Rename(h.hostPath(c.Path), h.hostPath(c.Path2)))
	case OpMkdir:
		return done(syscall.Mkdir(h.hostPath(c.Path), c.Mode&0o7777))
	case OpTruncate:
		return done(syscall.Truncate(h.hostPath(c.Path), c.Off))
	case OpClock:
		// Every clock reads the host's wall clock, which a machine taking
		// over shares; the process keeps monotonic clocks from going back.
		return Result{Value: h.Now().UnixNano()}
	case OpRandom:
		buf := make([]byte, min(c.Size, 256))
		if _, err := io.ReadFull(h.Random, buf); err != nil {
			return Result{Value: -EIO}
		}
		return Result{Value: int64(len(buf)), Data: buf}
	case OpAccess:
		return done(syscall.Access(h.hostPath(c.Path), c.Mode))
	case OpSync:
		f, err := h.file(c.Path, true)
		if err != nil {
			f, err = h.file(c.Path, false)
		}
		if err != nil {
			return fail(err)
		}
		return done(f.Sync())
	case OpChmod:
		return done(syscall.Chmod(h.hostPath(c.Path), c.Mode&0o7777))
	case OpChown:
		if c.Flags&atSymlinkNofoll != 0 {
			return done(syscall.Lchown(h.hostPath(c.Path), int(c.Off), int(int64(c.Size))))
		}
		return done(syscall.Chown(h.hostPath(c.Path), int(c.Off), int(int64(c.Size))))
	case OpUtimes:
		return h.utimes(c)
	case OpSymlink:
		return done(syscall.Symlink(c.Path2, h.hostPath(c.Path)))
	case OpLink:
		return done(syscall.Link(h.hostPath(c.Path), h.hostPath(c.Path2)))
	case OpSleep:
		time.Sleep(time.Duration(c.Off))
		return Result{}
	case OpTSC:
		// A counter at TSCHz from the wall clock: machines that take over
		// share it, where real TSCs would not.
		return Result{Value: h.Now().UnixNano()/1e9*TSCHz + h.Now().UnixNano()%1e9*(TSCHz/1e9)}
	}
	return Result{Value: -ENOSYS}
}

const (
	clockRealtime     = 0
	clockMonotonic    = 1
	clockMonotonicRaw = 4
	clockBoottime     = 7
)

func (h *Host) open(c Call) Result {
	p := h.hostPath(c.Path)
	flags := int(c.Flags) & (oAccMode | oCreat | oExcl | oTrunc | oDirectory)
	f, err := os.OpenFile(p, flags|syscall.O_CLOEXEC, os.FileMode(c.Mode&0o777))
	if err != nil {
		return fail(err)
	}
	defer f.Close()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		return fail(err)
	}
	return Result{Data: encodeStat(&st)}
}

// file returns a cached host file for a program path.
func (h *Host) file(p string, write bool) (*os.File, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	key := p
	if write {
		key = "w:" + p
	}
	if f, ok := h.files[key]; ok {
		return f, nil
	}
	flag := os.O_RDONLY
	if write {
		flag = os.O_WRONLY
	}
	f, err := os.OpenFile(h.hostPath(p), flag, 0)
	if err != nil {
		return nil, err
	}
	if len(h.files) >= 64 {
		for k, old := range h.files {
			old.Close()
			delete(h.files, k)
		}
	}
	h.files[key] = f
	return f, nil
}

func (h *Host) forget(p string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, k := range []string{p, "w:" + p} {
		if f, ok := h.files[k]; ok {
			f.Close()
			delete(h.files, k)
		}
	}
}

// utimes sets a file's times from two timespecs.
func (h *Host) utimes(c Call) Result {
	if len(c.Data) != 32 {
		return Result{Value: -EINVAL}
	}
	// syscall.UtimesNano is utimensat(AT_FDCWD, path, ts, 0): it passes
	// UTIME_NOW and UTIME_OMIT through, and follows a symbolic link.
	var ts [2]syscall.Timespec
	for i := range ts {
		ts[i].Sec = int64(binary.LittleEndian.Uint64(c.Data[16*i:]))
		ts[i].Nsec = int64(binary.LittleEndian.Uint64(c.Data[16*i+8:]))
	}
	return done(syscall.UtimesNano(h.hostPath(c.Path), ts[:]))
}

// readDir returns linux_dirent64 records for the entries from index Off
// (".", ".." and the directory's names in sorted order), as many as fit
// in Size bytes; d_off of each is the index after it.
func (h *Host) readDir(c Call) Result {
	p := h.hostPath(c.Path)
	ents, err := os.ReadDir(p)
	if err != nil {
		return fail(err)
	}
	names := []string{".", ".."}
	types := []uint8{4, 4}
	inos := []uint64{0, 0}
	sort.Slice(ents, func(i, j int) bool { return ents[i].Name() < ents[j].Name() })
	for _, e := range ents {
		names = append(names, e.Name())
		types = append(types, direntType(e.Type()))
		var ino uint64
		if info, err := e.Info(); err == nil {
			if st, ok := info.Sys().(*syscall.Stat_t); ok {
				ino = st.Ino
			}
		}
		inos = append(inos, ino)
	}
	var out []byte
	for i := int(c.Off); i >= 0 && i < len(names); i++ {
		reclen := (19 + len(names[i]) + 1 + 7) &^ 7
		if uint64(len(out)+reclen) > c.Size {
			if len(out) == 0 {
				return Result{Value: -EINVAL}
			}
			break
		}
		rec := make([]byte, reclen)
		ino := inos[i]
		if ino == 0 {
			ino = uint64(i + 1)
		}
		binary.LittleEndian.PutUint64(rec[0:], ino)
		binary.LittleEndian.PutUint64(rec[8:], uint64(i+1))
		binary.LittleEndian.PutUint16(rec[16:], uint16(reclen))
		rec[18] = types[i]
		copy(rec[19:], names[i])
		out = append(out, rec...)
	}
	return Result{Value: int64(len(out)), Data: out}
}

func direntType(m os.FileMode) uint8 {
	switch {
	case m.IsDir():
		return 4
	case m&os.ModeSymlink != 0:
		return 10
	case m&os.ModeNamedPipe != 0:
		return 1
	case m&os.ModeSocket != 0:
		return 12
	case m&os.ModeCharDevice != 0:
		return 2
	case m&os.ModeDevice != 0:
		return 6
	}
	return 8
}

// encodeStat lays out the x86-64 struct stat (144 bytes).
func encodeStat(st *syscall.Stat_t) []byte {
	b := make([]byte, statSize)
	le := binary.LittleEndian
	le.PutUint64(b[0:], st.Dev)
	le.PutUint64(b[8:], st.Ino)
	le.PutUint64(b[16:], st.Nlink)
	le.PutUint32(b[24:], st.Mode)
	le.PutUint32(b[28:], st.Uid)
	le.PutUint32(b[32:], st.Gid)
	le.PutUint64(b[40:], st.Rdev)
	le.PutUint64(b[48:], uint64(st.Size))
	le.PutUint64(b[56:], uint64(st.Blksize))
	le.PutUint64(b[64:], uint64(st.Blocks))
	le.PutUint64(b[72:], uint64(st.Atim.Sec))
	le.PutUint64(b[80:], uint64(st.Atim.Nsec))
	le.PutUint64(b[88:], uint64(st.Mtim.Sec))
	le.PutUint64(b[96:], uint64(st.Mtim.Nsec))
	le.PutUint64(b[104:], uint64(st.Ctim.Sec))
	le.PutUint64(b[112:], uint64(st.Ctim.Nsec))
	return b
}

const statSize = 144

func fail(err error) Result {
	var en syscall.Errno
	if errors.As(err, &en) {
		return Result{Value: -int64(en)}
	}
	return Result{Value: -EIO}
}

func done(err error) Result {
	if err != nil {
		return fail(err)
	}
	return Result{}
}
