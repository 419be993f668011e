package linux

import (
	"encoding/binary"
	"math"
	"path"
	"strings"
	"time"
)

// errno is a negated error number as a system call returns it.
func errno(e int) uint64 { return uint64(-int64(e)) }

// Syscall performs system call nr with args and returns RAX. An error is
// the environment's failure (or a divergence), not the program's: the
// machine stops on it.
func (p *Process) Syscall(m Machine, nr uint64, a [6]uint64) (uint64, error) {
	switch nr {
	case sysRead:
		return p.read(m, int(a[0]), a[1], a[2], -1)
	case sysPread64:
		return p.read(m, int(a[0]), a[1], a[2], int64(a[3]))
	case sysWrite:
		return p.write(m, int(a[0]), a[1], a[2], -1)
	case sysPwrite64:
		return p.write(m, int(a[0]), a[1], a[2], int64(a[3]))
	case sysReadv, sysWritev:
		return p.vector(m, nr, int(a[0]), a[1], a[2])
	case sysOpen:
		return p.openat(m, atFDCWD, a[0], a[1], a[2])
	case sysCreat:
		return p.openat(m, atFDCWD, a[0], oCreat|oWronly|oTrunc, a[1])
	case sysOpenat:
		return p.openat(m, int(int32(a[0])), a[1], a[2], a[3])
	case sysClose:
		return p.close(int(a[0])), nil
	case sysCloseRange:
		for fd := a[0]; fd <= a[1] && fd < uint64(len(p.fds)); fd++ {
			p.close(int(fd))
		}
		return 0, nil
	case sysStat:
		return p.stat(m, atFDCWD, a[0], a[1], 0)
	case sysLstat:
		return p.stat(m, atFDCWD, a[0], a[1], atSymlinkNofoll)
	case sysFstat:
		return p.stat(m, int(a[0]), 0, a[1], atEmptyPath)
	case sysNewfstatat:
		return p.stat(m, int(int32(a[0])), a[1], a[2], a[3])
	case sysStatx:
		return p.statx(m, int(int32(a[0])), a[1], a[2], a[4])
	case sysLseek:
		return p.lseek(m, int(a[0]), int64(a[1]), int(a[2]))
	case sysGetdents64:
		return p.getdents(m, int(a[0]), a[1], a[2])
	case sysAccess:
		return p.access(m, atFDCWD, a[0], a[1])
	case sysFaccessat, sysFaccessat2:
		return p.access(m, int(int32(a[0])), a[1], a[2])
	case sysReadlink:
		return p.readlink(m, atFDCWD, a[0], a[1], a[2])
	case sysReadlinkat:
		return p.readlink(m, int(int32(a[0])), a[1], a[2], a[3])
	case sysUnlink:
		return p.pathOp(m, atFDCWD, a[0], OpUnlink, 0, 0)
	case sysRmdir:
		return p.pathOp(m, atFDCWD, a[0], OpUnlink, atRemoveDir, 0)
	case sysUnlinkat:
		return p.pathOp(m, int(int32(a[0])), a[1], OpUnlink, a[2]&atRemoveDir, 0)
	case sysMkdir:
		return p.pathOp(m, atFDCWD, a[0], OpMkdir, 0, uint32(a[1])&^p.umask)
	case sysMkdirat:
		return p.pathOp(m, int(int32(a[0])), a[1], OpMkdir, 0, uint32(a[2])&^p.umask)
	case sysRename:
		return p.rename(m, atFDCWD, a[0], atFDCWD, a[1])
	case sysRenameat, sysRenameat2:
		if nr == sysRenameat2 && a[4] != 0 {
			return errno(EINVAL), nil
		}
		return p.rename(m, int(int32(a[0])), a[1], int(int32(a[2])), a[3])
	case sysSendfile:
		return p.sendfile(m, int(a[0]), int(a[1]), a[2], a[3])
	case sysChmod:
		return p.pathOp(m, atFDCWD, a[0], OpChmod, 0, uint32(a[1]))
	case sysFchmodat:
		return p.pathOp(m, int(int32(a[0])), a[1], OpChmod, 0, uint32(a[2]))
	case sysFchmod:
		return p.fdOp(m, int(a[0]), Call{Op: OpChmod, Mode: uint32(a[1])})
	case sysChown, sysLchown:
		return p.chown(m, atFDCWD, a[0], a[1], a[2], map[uint64]uint64{sysChown: 0, sysLchown: atSymlinkNofoll}[nr])
	case sysFchownat:
		return p.chown(m, int(int32(a[0])), a[1], a[2], a[3], a[4])
	case sysFchown:
		return p.fdOp(m, int(a[0]), Call{Op: OpChown, Off: int64(int32(a[1])), Size: uint64(int64(int32(a[2])))})
	case sysUtimensat:
		return p.utimensat(m, int(int32(a[0])), a[1], a[2], a[3])
	case sysSymlink:
		return p.symlink(m, a[0], atFDCWD, a[1])
	case sysSymlinkat:
		return p.symlink(m, a[0], int(int32(a[1])), a[2])
	case sysLink:
		return p.link(m, atFDCWD, a[0], atFDCWD, a[1])
	case sysLinkat:
		return p.link(m, int(int32(a[0])), a[1], int(int32(a[2])), a[3])
	case sysTruncate:
		pth, e := p.pathArg(m, atFDCWD, a[0])
		if e != 0 {
			return errno(e), nil
		}
		return p.ask(m, Call{Op: OpTruncate, Path: pth, Off: int64(a[1])})
	case sysFtruncate:
		f := p.file(int(a[0]))
		if f == nil || f.kind != kindFile {
			return errno(EBADF), nil
		}
		return p.ask(m, Call{Op: OpTruncate, Path: f.path, Off: int64(a[1])})
	case sysGetcwd:
		return p.getcwd(m, a[0], a[1])
	case sysChdir:
		return p.chdir(m, a[0])
	case sysFchdir:
		f := p.file(int(a[0]))
		if f == nil || f.kind != kindDir {
			return errno(ENOTDIR), nil
		}
		p.cwd = f.path
		return 0, nil
	case sysDup:
		return p.dup(int(a[0]), 0, false)
	case sysDup2:
		if a[0] == a[1] {
			if p.file(int(a[0])) == nil {
				return errno(EBADF), nil
			}
			return a[1], nil
		}
		return p.dup2(int(a[0]), int(a[1]), false)
	case sysDup3:
		if a[0] == a[1] {
			return errno(EINVAL), nil
		}
		return p.dup2(int(a[0]), int(a[1]), a[2]&oCloexec != 0)
	case sysFcntl:
		return p.fcntl(m, int(a[0]), int(a[1]), a[2])
	case sysPipe, sysPipe2:
		return p.pipe(m, a[0], a[1])
	case sysIoctl:
		if p.file(int(a[0])) == nil {
			return errno(EBADF), nil
		}
		return errno(ENOTTY), nil // no descriptor is a terminal (docs/linux.md)
	case sysFsync, sysFdatasync:
		f := p.file(int(a[0]))
		if f == nil {
			return errno(EBADF), nil
		}
		if f.kind != kindFile {
			return 0, nil
		}
		return p.ask(m, Call{Op: OpSync, Path: f.path})
	case sysFadvise64:
		if p.file(int(a[0])) == nil {
			return errno(EBADF), nil
		}
		return 0, nil
	case sysBrk:
		return p.setBrk(m, a[0]), nil
	case sysMmap:
		return p.mmap(m, a[0], a[1], Prot(a[2]&7), a[3], int(int32(a[4])), int64(a[5]))
	case sysMunmap:
		if a[0]%PageSize != 0 || a[1] == 0 {
			return errno(EINVAL), nil
		}
		p.unmap(m, a[0], pageUp(a[1]))
		return 0, nil
	case sysMprotect:
		if a[0]%PageSize != 0 {
			return errno(EINVAL), nil
		}
		if err := p.protect(m, a[0], pageUp(a[1]), Prot(a[2]&7)); err != nil {
			return errno(ENOMEM), nil
		}
		return 0, nil
	case sysMremap:
		return p.mremap(m, a[0], a[1], a[2], a[3], a[4])
	case sysMadvise:
		return 0, nil
	case sysArchPrctl:
		return p.archPrctl(m, a[0], a[1])
	case sysSetTidAddress, sysGettid, sysGetpid:
		return fakePID, nil
	case sysGetppid:
		return 1, nil
	case sysGetpgrp, sysSetpgid:
		return 0, nil
	case sysGetuid, sysGeteuid:
		return uint64(p.cfg.UID), nil
	case sysGetgid, sysGetegid:
		return uint64(p.cfg.GID), nil
	case sysSetuid, sysSetgid, sysSetresuid, sysSetresgid, sysSetgroups:
		return 0, nil
	case sysGetgroups:
		return 0, nil
	case sysRtSigaction:
		// Accepted; no signal is ever delivered. The old action reads as
		// SIG_DFL (a kernel sigaction: handler, flags, restorer, mask).
		return p.zeroOut(m, a[2], 32)
	case sysRtSigprocmask:
		return p.zeroOut(m, a[2], 8)
	case sysSigaltstack:
		if a[1] != 0 {
			old := make([]byte, 24)
			binary.LittleEndian.PutUint32(old[8:], 2) // SS_DISABLE
			if err := m.Write(a[1], old); err != nil {
				return errno(EFAULT), nil
			}
		}
		return 0, nil
	case sysSetRobustList, sysSchedYield, sysMsync, sysFlock, sysAlarm:
		return 0, nil // alarm: no signal is ever delivered (docs/linux.md)
	case sysSetsid, sysGetsid, sysGetpgid:
		return fakePID, nil
	case sysGetrusage:
		return p.zeroOut(m, a[1], 144) // no CPU time is accounted to the program
	case sysTimes:
		if _, err := p.zeroOut(m, a[0], 32); err != nil {
			return 0, err
		}
		ns, err := p.clock(m, clockMonotonic)
		if err != nil {
			return 0, err
		}
		return uint64(ns / 1e7), nil // clock ticks at AT_CLKTCK (100 Hz)
	case sysRseq:
		return errno(ENOSYS), nil // glibc runs without it
	case sysPrlimit64:
		return p.prlimit(m, int(a[1]), a[3])
	case sysGetrlimit:
		return p.prlimit(m, int(a[0]), a[1])
	case sysSetrlimit:
		return 0, nil
	case sysPrctl:
		return p.prctl(m, a[0], a[1])
	case sysUmask:
		old := p.umask
		p.umask = uint32(a[0]) & 0o777
		return uint64(old), nil
	case sysUname:
		return p.uname(m, a[0])
	case sysSysinfo:
		return p.sysinfo(m, a[0])
	case sysClockGettime:
		return p.clockGettime(m, a[0], a[1])
	case sysClockGetres:
		if a[1] != 0 {
			if err := m.Write(a[1], timespec(1)); err != nil {
				return errno(EFAULT), nil
			}
		}
		return 0, nil
	case sysGettimeofday:
		return p.gettimeofday(m, a[0])
	case sysTime:
		ns, err := p.clock(m, clockRealtime)
		if err != nil {
			return 0, err
		}
		if a[0] != 0 {
			if err := m.Write(a[0], u64(uint64(ns/1e9))); err != nil {
				return errno(EFAULT), nil
			}
		}
		return uint64(ns / 1e9), nil
	case sysNanosleep:
		return p.sleep(m, clockMonotonic, 0, a[0])
	case sysClockNanosleep:
		return p.sleep(m, a[0], a[1], a[2])
	case sysGetrandom:
		return p.getrandom(m, a[0], a[1])
	case sysFutex:
		return 0, nil // single-threaded: no waiter can exist
	case sysSchedGetaff:
		if a[1] < 8 {
			return errno(EINVAL), nil
		}
		if err := m.Write(a[2], u64(1)); err != nil {
			return errno(EFAULT), nil
		}
		return 8, nil
	case sysPoll, sysPpoll:
		return p.poll(m, a[0], a[1])
	case sysSelect, sysPselect6:
		return p.selectFDs(m, int(a[0]), a[1], a[2], a[3])
	case sysExit, sysExitGroup:
		p.Exited, p.ExitCode = true, int(a[0]&0xFF)
		return 0, nil
	case sysClone, sysClone3, sysFork, sysVfork, sysExecve, sysWait4:
		p.unsupported(nr)
		return errno(ENOSYS), nil
	case sysKill, sysTgkill:
		return errno(EPERM), nil
	}
	p.unsupported(nr)
	return errno(ENOSYS), nil
}

func (p *Process) unsupported(nr uint64) {
	if p.warned[nr] {
		return
	}
	p.warned[nr] = true
	if p.Unsupported != nil {
		p.Unsupported(nr, SyscallName(nr))
	}
}

func (p *Process) ask(m Machine, c Call) (uint64, error) {
	r, err := m.Ask(c)
	if err != nil {
		return 0, err
	}
	return uint64(r.Value), nil
}

func u64(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }

func timespec(ns int64) []byte {
	b := u64(uint64(ns / 1e9))
	return append(b, u64(uint64(ns%1e9))...)
}

func (p *Process) file(fd int) *file {
	if fd < 0 || fd >= len(p.fds) || p.fds[fd] == nil {
		return nil
	}
	return p.fds[fd].f
}

// readString reads a NUL-terminated string of at most 4095 bytes.
func (p *Process) readString(m Machine, addr uint64) (string, int) {
	var out []byte
	var buf [1]byte
	chunk := make([]byte, 256)
	for len(out) < 4096 {
		n := uint64(len(chunk))
		if room := PageSize - (addr+uint64(len(out)))%PageSize; room < n {
			n = room
		}
		if err := m.Read(addr+uint64(len(out)), chunk[:n]); err != nil {
			if err := m.Read(addr+uint64(len(out)), buf[:]); err != nil {
				return "", EFAULT
			}
			chunk[0], n = buf[0], 1
		}
		for i := uint64(0); i < n; i++ {
			if chunk[i] == 0 {
				return string(append(out, chunk[:i]...)), 0
			}
		}
		out = append(out, chunk[:n]...)
	}
	return "", ENAMETOOLONG
}

// pathArg reads a path argument and makes it absolute against dirfd.
func (p *Process) pathArg(m Machine, dirfd int, addr uint64) (string, int) {
	s, e := p.readString(m, addr)
	if e != 0 {
		return "", e
	}
	if s == "" {
		return "", ENOENT
	}
	return p.resolve(dirfd, s)
}

func (p *Process) resolve(dirfd int, s string) (string, int) {
	if strings.HasPrefix(s, "/") {
		return path.Clean(s), 0
	}
	base := p.cwd
	if dirfd != atFDCWD {
		f := p.file(dirfd)
		if f == nil {
			return "", EBADF
		}
		if f.kind != kindDir {
			return "", ENOTDIR
		}
		base = f.path
	}
	return path.Join(base, s), 0
}

func (p *Process) install(f *file, cloexec bool, from int) int {
	for i := from; i < len(p.fds); i++ {
		if p.fds[i] == nil {
			p.fds[i] = &fd{f: f, cloexec: cloexec}
			return i
		}
	}
	for len(p.fds) < from {
		p.fds = append(p.fds, nil)
	}
	p.fds = append(p.fds, &fd{f: f, cloexec: cloexec})
	return len(p.fds) - 1
}

const maxFDs = 1024

func (p *Process) openat(m Machine, dirfd int, pathAddr, flags, mode uint64) (uint64, error) {
	pth, e := p.pathArg(m, dirfd, pathAddr)
	if e != 0 {
		return errno(e), nil
	}
	if len(p.fds) >= maxFDs && p.lowestFree() < 0 {
		return errno(EMFILE), nil
	}
	if pth == "/proc/self/exe" {
		pth = p.cfg.Exe
	}
	r, err := m.Ask(Call{Op: OpOpen, Path: pth, Flags: flags &^ oCloexec, Mode: uint32(mode) &^ p.umask})
	if err != nil {
		return 0, err
	}
	if r.Value < 0 {
		return uint64(r.Value), nil
	}
	if len(r.Data) != statSize {
		return errno(EIO), nil
	}
	st := r.Data
	kind := kindFile
	if binary.LittleEndian.Uint32(st[24:])&0o170000 == 0o040000 {
		kind = kindDir
	}
	f := p.newFile(kind, pth, flags&^(oCreat|oExcl|oTrunc|oCloexec))
	return uint64(p.install(f, flags&oCloexec != 0, 0)), nil
}

func (p *Process) lowestFree() int {
	for i, d := range p.fds {
		if d == nil {
			return i
		}
	}
	return -1
}

func (p *Process) close(fdn int) uint64 {
	f := p.file(fdn)
	if f == nil {
		return errno(EBADF)
	}
	p.fds[fdn] = nil
	if f.pipe != nil && !p.shared(f) {
		if f.kind == kindPipeRead {
			f.pipe.readers--
		} else {
			f.pipe.writers--
		}
	}
	for len(p.fds) > 3 && p.fds[len(p.fds)-1] == nil {
		p.fds = p.fds[:len(p.fds)-1]
	}
	return 0
}

// shared reports whether another descriptor still refers to f.
func (p *Process) shared(f *file) bool {
	for _, d := range p.fds {
		if d != nil && d.f == f {
			return true
		}
	}
	return false
}

func (p *Process) read(m Machine, fdn int, buf, count uint64, at int64) (uint64, error) {
	f := p.file(fdn)
	if f == nil || f.flags&oAccMode == oWronly {
		return errno(EBADF), nil
	}
	if count == 0 {
		return 0, nil
	}
	count = min(count, MaxTransfer)
	var data []byte
	switch f.kind {
	case kindStdin:
		if at >= 0 {
			return errno(ESPIPE), nil
		}
		r, err := m.Ask(Call{Op: OpStdin, Size: count})
		if err != nil {
			return 0, err
		}
		if r.Value < 0 {
			return uint64(r.Value), nil
		}
		data = r.Data
		p.stdinRead += uint64(len(data))
	case kindFile:
		off := f.off
		if at >= 0 {
			off = at
		}
		r, err := m.Ask(Call{Op: OpRead, Path: f.path, Off: off, Size: count})
		if err != nil {
			return 0, err
		}
		if r.Value < 0 {
			return uint64(r.Value), nil
		}
		data = r.Data
		if at < 0 {
			f.off += int64(len(data))
		}
	case kindDir:
		return errno(EISDIR), nil
	case kindPipeRead:
		n := min(uint64(len(f.pipe.buf)), count)
		if n == 0 && f.pipe.writers > 0 {
			return errno(EAGAIN), nil // the only writer is this process, which is reading
		}
		data = append([]byte(nil), f.pipe.buf[:n]...)
		f.pipe.buf = f.pipe.buf[n:]
	default:
		return errno(EBADF), nil
	}
	if uint64(len(data)) > count {
		data = data[:count]
	}
	if err := m.Write(buf, data); err != nil {
		return errno(EFAULT), nil
	}
	return uint64(len(data)), nil
}

func (p *Process) write(m Machine, fdn int, buf, count uint64, at int64) (uint64, error) {
	f := p.file(fdn)
	if f == nil || f.flags&oAccMode == oRdonly && f.kind != kindStdout && f.kind != kindStderr {
		return errno(EBADF), nil
	}
	count = min(count, MaxTransfer)
	data := make([]byte, count)
	if err := m.Read(buf, data); err != nil {
		return errno(EFAULT), nil
	}
	return p.writeData(m, f, data, at)
}

// writeData writes data to f at its offset (at < 0) or at at.
func (p *Process) writeData(m Machine, f *file, data []byte, at int64) (uint64, error) {
	count := uint64(len(data))
	switch f.kind {
	case kindStdout, kindStderr:
		if at >= 0 {
			return errno(ESPIPE), nil
		}
		fdNum := 1
		if f.kind == kindStderr {
			fdNum = 2
		}
		if err := m.Emit(fdNum, data); err != nil {
			return 0, err
		}
		return count, nil
	case kindFile:
		off := f.off
		if at >= 0 {
			off = at
		} else if f.flags&oAppend != 0 {
			// An append is a write at the size the file has now: positional
			// writes are repeatable, so a failover may redo one.
			r, err := m.Ask(Call{Op: OpStat, Path: f.path})
			if err != nil {
				return 0, err
			}
			if r.Value < 0 || len(r.Data) != statSize {
				return errno(EIO), nil
			}
			off = int64(binary.LittleEndian.Uint64(r.Data[48:]))
		}
		r, err := m.Ask(Call{Op: OpWrite, Path: f.path, Off: off, Data: data})
		if err != nil {
			return 0, err
		}
		if r.Value < 0 {
			return uint64(r.Value), nil
		}
		if at < 0 {
			f.off = off + r.Value
		}
		return uint64(r.Value), nil
	case kindPipeWrite:
		if f.pipe.readers == 0 {
			return errno(32), nil // EPIPE; no signal is delivered
		}
		f.pipe.buf = append(f.pipe.buf, data...)
		return count, nil
	case kindDir:
		return errno(EISDIR), nil
	}
	return errno(EBADF), nil
}

func (p *Process) vector(m Machine, nr uint64, fdn int, iov, cnt uint64) (uint64, error) {
	if cnt > 1024 {
		return errno(EINVAL), nil
	}
	var total uint64
	for i := uint64(0); i < cnt; i++ {
		var ent [16]byte
		if err := m.Read(iov+16*i, ent[:]); err != nil {
			return errno(EFAULT), nil
		}
		base, n := binary.LittleEndian.Uint64(ent[:]), binary.LittleEndian.Uint64(ent[8:])
		if n == 0 {
			continue
		}
		var r uint64
		var err error
		if nr == sysReadv {
			r, err = p.read(m, fdn, base, n, -1)
		} else {
			r, err = p.write(m, fdn, base, n, -1)
		}
		if err != nil {
			return 0, err
		}
		if int64(r) < 0 {
			if total > 0 {
				return total, nil
			}
			return r, nil
		}
		total += r
		if r < n {
			break
		}
	}
	return total, nil
}

func (p *Process) stat(m Machine, dirfd int, pathAddr, statAddr, flags uint64) (uint64, error) {
	st, e, err := p.statData(m, dirfd, pathAddr, flags)
	if err != nil || e != 0 {
		return errno(e), err
	}
	if err := m.Write(statAddr, st); err != nil {
		return errno(EFAULT), nil
	}
	return 0, nil
}

// statData returns the struct stat a stat-family call names.
func (p *Process) statData(m Machine, dirfd int, pathAddr, flags uint64) ([]byte, int, error) {
	var c Call
	s := ""
	if pathAddr != 0 {
		var e int
		if s, e = p.readString(m, pathAddr); e != 0 {
			return nil, e, nil
		}
	}
	if s == "" {
		if flags&atEmptyPath == 0 {
			return nil, ENOENT, nil
		}
		f := p.file(dirfd)
		if dirfd == atFDCWD {
			f = &file{kind: kindDir, path: p.cwd}
		}
		switch {
		case f == nil:
			return nil, EBADF, nil
		case f.kind == kindStdin || f.kind == kindStdout || f.kind == kindStderr:
			c = Call{Op: OpStdStat, Flags: uint64(f.kind - kindStdin)}
		case f.kind == kindFile || f.kind == kindDir:
			c = Call{Op: OpStat, Path: f.path}
		default:
			st := make([]byte, statSize)
			binary.LittleEndian.PutUint32(st[24:], 0o010600) // a FIFO
			return st, 0, nil
		}
	} else {
		pth, e := p.resolve(dirfd, s)
		if e != 0 {
			return nil, e, nil
		}
		if pth == "/proc/self/exe" {
			pth = p.cfg.Exe
		}
		c = Call{Op: OpStat, Path: pth, Flags: flags & atSymlinkNofoll}
	}
	r, err := m.Ask(c)
	if err != nil {
		return nil, 0, err
	}
	if r.Value < 0 {
		return nil, int(-r.Value), nil
	}
	if len(r.Data) != statSize {
		return nil, EIO, nil
	}
	return r.Data, 0, nil
}

// statx answers from struct stat, with the basic fields.
func (p *Process) statx(m Machine, dirfd int, pathAddr, flags, out uint64) (uint64, error) {
	st, e, err := p.statData(m, dirfd, pathAddr, flags)
	if err != nil || e != 0 {
		return errno(e), err
	}
	le := binary.LittleEndian
	b := make([]byte, 256)
	le.PutUint32(b[0:], 0x7ff)                      // STATX_BASIC_STATS
	le.PutUint32(b[4:], uint32(le.Uint64(st[56:]))) // blksize
	le.PutUint32(b[16:], uint32(le.Uint64(st[16:])))
	le.PutUint32(b[20:], le.Uint32(st[28:]))
	le.PutUint32(b[24:], le.Uint32(st[32:]))
	le.PutUint16(b[28:], uint16(le.Uint32(st[24:])))
	le.PutUint64(b[32:], le.Uint64(st[8:]))
	le.PutUint64(b[40:], le.Uint64(st[48:]))
	le.PutUint64(b[48:], le.Uint64(st[64:]))
	for i, off := range []int{72, 104, 104, 88} { // atime, btime (ctime), ctime, mtime
		le.PutUint64(b[64+16*i:], le.Uint64(st[off:]))
		le.PutUint32(b[72+16*i:], uint32(le.Uint64(st[off+8:])))
	}
	rdev, dev := le.Uint64(st[40:]), le.Uint64(st[0:])
	le.PutUint32(b[128:], uint32(rdev>>8&0xfff))
	le.PutUint32(b[132:], uint32(rdev&0xff))
	le.PutUint32(b[136:], uint32(dev>>8&0xfff))
	le.PutUint32(b[140:], uint32(dev&0xff))
	if err := m.Write(out, b); err != nil {
		return errno(EFAULT), nil
	}
	return 0, nil
}

func (p *Process) lseek(m Machine, fdn int, off int64, whence int) (uint64, error) {
	f := p.file(fdn)
	if f == nil {
		return errno(EBADF), nil
	}
	if f.kind != kindFile && f.kind != kindDir {
		return errno(ESPIPE), nil
	}
	var base int64
	switch whence {
	case 0:
	case 1:
		base = f.off
	case 2:
		r, err := m.Ask(Call{Op: OpStat, Path: f.path})
		if err != nil {
			return 0, err
		}
		if r.Value < 0 || len(r.Data) != statSize {
			return errno(EIO), nil
		}
		base = int64(binary.LittleEndian.Uint64(r.Data[48:]))
	default:
		return errno(EINVAL), nil
	}
	if base+off < 0 {
		return errno(EINVAL), nil
	}
	f.off = base + off
	return uint64(f.off), nil
}

func (p *Process) getdents(m Machine, fdn int, buf, count uint64) (uint64, error) {
	f := p.file(fdn)
	if f == nil {
		return errno(EBADF), nil
	}
	if f.kind != kindDir {
		return errno(ENOTDIR), nil
	}
	r, err := m.Ask(Call{Op: OpReadDir, Path: f.path, Off: f.off, Size: min(count, MaxTransfer)})
	if err != nil {
		return 0, err
	}
	if r.Value <= 0 {
		return uint64(r.Value), nil
	}
	// The next position is the last record's d_off.
	data := r.Data
	for off := 0; off+19 <= len(data); {
		reclen := int(binary.LittleEndian.Uint16(data[off+16:]))
		if reclen == 0 {
			break
		}
		f.off = int64(binary.LittleEndian.Uint64(data[off+8:]))
		off += reclen
	}
	if err := m.Write(buf, data); err != nil {
		return errno(EFAULT), nil
	}
	return uint64(len(data)), nil
}

func (p *Process) access(m Machine, dirfd int, pathAddr, mode uint64) (uint64, error) {
	pth, e := p.pathArg(m, dirfd, pathAddr)
	if e != 0 {
		return errno(e), nil
	}
	return p.ask(m, Call{Op: OpAccess, Path: pth, Mode: uint32(mode)})
}

func (p *Process) readlink(m Machine, dirfd int, pathAddr, buf, size uint64) (uint64, error) {
	pth, e := p.pathArg(m, dirfd, pathAddr)
	if e != 0 {
		return errno(e), nil
	}
	var target []byte
	if pth == "/proc/self/exe" {
		target = []byte(p.cfg.Exe)
	} else {
		r, err := m.Ask(Call{Op: OpReadlink, Path: pth})
		if err != nil {
			return 0, err
		}
		if r.Value < 0 {
			return uint64(r.Value), nil
		}
		target = r.Data
	}
	if uint64(len(target)) > size {
		target = target[:size]
	}
	if err := m.Write(buf, target); err != nil {
		return errno(EFAULT), nil
	}
	return uint64(len(target)), nil
}

func (p *Process) pathOp(m Machine, dirfd int, pathAddr uint64, op Op, flags uint64, mode uint32) (uint64, error) {
	pth, e := p.pathArg(m, dirfd, pathAddr)
	if e != 0 {
		return errno(e), nil
	}
	return p.ask(m, Call{Op: op, Path: pth, Flags: flags, Mode: mode})
}

func (p *Process) rename(m Machine, oldfd int, oldAddr uint64, newfd int, newAddr uint64) (uint64, error) {
	return p.twoPaths(m, OpRename, oldfd, oldAddr, newfd, newAddr)
}

// twoPaths asks op of the paths at oldAddr and newAddr (rename, link).
func (p *Process) twoPaths(m Machine, op Op, oldfd int, oldAddr uint64, newfd int, newAddr uint64) (uint64, error) {
	from, e := p.pathArg(m, oldfd, oldAddr)
	if e != 0 {
		return errno(e), nil
	}
	to, e := p.pathArg(m, newfd, newAddr)
	if e != 0 {
		return errno(e), nil
	}
	return p.ask(m, Call{Op: op, Path: from, Path2: to})
}

func (p *Process) getcwd(m Machine, buf, size uint64) (uint64, error) {
	b := append([]byte(p.cwd), 0)
	if uint64(len(b)) > size {
		return errno(ERANGE), nil
	}
	if err := m.Write(buf, b); err != nil {
		return errno(EFAULT), nil
	}
	return uint64(len(b)), nil
}

func (p *Process) chdir(m Machine, pathAddr uint64) (uint64, error) {
	pth, e := p.pathArg(m, atFDCWD, pathAddr)
	if e != 0 {
		return errno(e), nil
	}
	r, err := m.Ask(Call{Op: OpStat, Path: pth})
	if err != nil {
		return 0, err
	}
	if r.Value < 0 {
		return uint64(r.Value), nil
	}
	if len(r.Data) != statSize || binary.LittleEndian.Uint32(r.Data[24:])&0o170000 != 0o040000 {
		return errno(ENOTDIR), nil
	}
	p.cwd = pth
	return 0, nil
}

func (p *Process) dup(old, from int, cloexec bool) (uint64, error) {
	f := p.file(old)
	if f == nil {
		return errno(EBADF), nil
	}
	if from >= maxFDs {
		return errno(EINVAL), nil
	}
	return uint64(p.install(f, cloexec, from)), nil
}

func (p *Process) dup2(old, nfd int, cloexec bool) (uint64, error) {
	f := p.file(old)
	if f == nil {
		return errno(EBADF), nil
	}
	if nfd < 0 || nfd >= maxFDs {
		return errno(EBADF), nil
	}
	if p.file(nfd) != nil {
		p.close(nfd)
	}
	for len(p.fds) <= nfd {
		p.fds = append(p.fds, nil)
	}
	p.fds[nfd] = &fd{f: f, cloexec: cloexec}
	return uint64(nfd), nil
}

func (p *Process) fcntl(m Machine, fdn, cmd int, arg uint64) (uint64, error) {
	f := p.file(fdn)
	if f == nil {
		return errno(EBADF), nil
	}
	switch cmd {
	case 0, 1030: // F_DUPFD, F_DUPFD_CLOEXEC
		return p.dup(fdn, int(arg), cmd == 1030)
	case 1: // F_GETFD
		if p.fds[fdn].cloexec {
			return 1, nil
		}
		return 0, nil
	case 2: // F_SETFD
		p.fds[fdn].cloexec = arg&1 != 0
		return 0, nil
	case 3: // F_GETFL
		return f.flags, nil
	case 4: // F_SETFL
		f.flags = f.flags&^(oAppend|oNonblock) | arg&(oAppend|oNonblock)
		return 0, nil
	case 5, 36: // F_GETLK, F_OFD_GETLK: one process holds every lock there is
		if err := m.Write(arg, []byte{2, 0}); err != nil { // l_type = F_UNLCK
			return errno(EFAULT), nil
		}
		return 0, nil
	case 6, 7, 37, 38: // F_SETLK, F_SETLKW and the OFD forms: granted
		return 0, nil
	}
	return errno(EINVAL), nil
}

func (p *Process) pipe(m Machine, addr, flags uint64) (uint64, error) {
	p.nextID++
	pp := &pipe{id: p.nextID, readers: 1, writers: 1}
	r := p.newFile(kindPipeRead, "", oRdonly)
	w := p.newFile(kindPipeWrite, "", oWronly)
	r.pipe, w.pipe = pp, pp
	cloexec := flags&oCloexec != 0
	rfd := p.install(r, cloexec, 0)
	wfd := p.install(w, cloexec, 0)
	b := binary.LittleEndian.AppendUint32(nil, uint32(rfd))
	b = binary.LittleEndian.AppendUint32(b, uint32(wfd))
	if err := m.Write(addr, b); err != nil {
		p.close(rfd)
		p.close(wfd)
		return errno(EFAULT), nil
	}
	return 0, nil
}

// maxHeap bounds brk above the program.
const maxHeap = 1 << 30

func (p *Process) setBrk(m Machine, want uint64) uint64 {
	if want < p.brkBase || want > p.brkBase+maxHeap {
		return p.brk
	}
	old, next := pageUp(p.brk), pageUp(want)
	switch {
	case next > old:
		for a := old; a < next; a += PageSize {
			if p.find(a) != nil {
				return p.brk
			}
		}
		if err := p.mapFixed(m, old, next-old, ProtRead|ProtWrite); err != nil {
			return p.brk
		}
	case next < old:
		p.unmap(m, next, old-next)
	}
	p.brk = want
	return p.brk
}

func (p *Process) mmap(m Machine, addr, length uint64, prot Prot, flags uint64, fdn int, off int64) (uint64, error) {
	if length == 0 || addr%PageSize != 0 || off%PageSize != 0 {
		return errno(EINVAL), nil
	}
	size := pageUp(length)
	if size < length || size > 1<<40 {
		return errno(ENOMEM), nil
	}
	var f *file
	if flags&mapAnonymous == 0 {
		if f = p.file(fdn); f == nil {
			return errno(EBADF), nil
		}
		if f.kind != kindFile {
			return errno(19), nil // ENODEV
		}
		if flags&mapShared != 0 && prot&ProtWrite != 0 {
			return errno(EINVAL), nil // shared writable file mappings are not supported
		}
	}
	fixed := flags&(mapFixed|mapFixedNoRe) != 0
	if fixed {
		if addr < minMapAddr || addr+size > stackTop || addr+size < addr {
			return errno(ENOMEM), nil
		}
		if flags&mapFixedNoRe != 0 {
			for a := addr; a < addr+size; a += PageSize {
				if p.find(a) != nil {
					return errno(EEXIST), nil
				}
			}
		}
	} else {
		var ok bool
		if addr, ok = p.freeRange(size); !ok {
			return errno(ENOMEM), nil
		}
	}
	if err := p.mapFixed(m, addr, size, prot|ProtWrite); err != nil {
		return errno(ENOMEM), nil
	}
	if f != nil {
		for done := uint64(0); done < length; {
			r, err := m.Ask(Call{Op: OpRead, Path: f.path, Off: off + int64(done), Size: min(length-done, MaxTransfer)})
			if err != nil {
				return 0, err
			}
			if r.Value <= 0 {
				break
			}
			if err := m.Write(addr+done, r.Data); err != nil {
				return errno(EFAULT), nil
			}
			done += uint64(len(r.Data))
		}
	}
	if prot&ProtWrite == 0 {
		if err := p.protect(m, addr, size, prot); err != nil {
			return errno(ENOMEM), nil
		}
	}
	return addr, nil
}

func (p *Process) mremap(m Machine, old, oldSize, newSize, flags, newAddr uint64) (uint64, error) {
	if old%PageSize != 0 || newSize == 0 || flags&mremapFixed != 0 {
		return errno(EINVAL), nil
	}
	oldSize, newSize = pageUp(oldSize), pageUp(newSize)
	v := p.find(old)
	if v == nil || v.end < old+oldSize {
		return errno(14), nil // EFAULT
	}
	prot := v.prot
	if newSize <= oldSize {
		p.unmap(m, old+newSize, oldSize-newSize)
		return old, nil
	}
	free := true
	for a := old + oldSize; a < old+newSize; a += PageSize {
		if p.find(a) != nil || a >= mmapTop {
			free = false
			break
		}
	}
	if free {
		if err := p.mapFixed(m, old+oldSize, newSize-oldSize, prot); err != nil {
			return errno(ENOMEM), nil
		}
		return old, nil
	}
	if flags&mremapMaymov == 0 {
		return errno(ENOMEM), nil
	}
	to, ok := p.freeRange(newSize)
	if !ok {
		return errno(ENOMEM), nil
	}
	if err := m.Move(old, to, oldSize); err != nil {
		return errno(ENOMEM), nil
	}
	p.forget(old, oldSize)
	p.vmas = append(p.vmas, vma{to, to + oldSize, prot})
	if err := p.mapFixed(m, to+oldSize, newSize-oldSize, prot); err != nil {
		return errno(ENOMEM), nil
	}
	return to, nil
}

// forget drops mappings of [addr, addr+size) whose pages have moved.
func (p *Process) forget(addr, size uint64) {
	p.split(addr)
	p.split(addr + size)
	out := p.vmas[:0]
	for _, v := range p.vmas {
		if v.start >= addr && v.end <= addr+size {
			continue
		}
		out = append(out, v)
	}
	p.vmas = out
}

func (p *Process) archPrctl(m Machine, code, addr uint64) (uint64, error) {
	switch code {
	case 0x1002: // ARCH_SET_FS
		if err := m.SetFSBase(addr); err != nil {
			return 0, err
		}
		return 0, nil
	case 0x3001: // ARCH_CET_STATUS
		return errno(EINVAL), nil
	}
	return errno(EINVAL), nil
}

func (p *Process) prlimit(m Machine, resource int, old uint64) (uint64, error) {
	if old == 0 {
		return 0, nil
	}
	cur, max := ^uint64(0), ^uint64(0)
	switch resource {
	case 3: // RLIMIT_STACK
		cur = stackMax
	case 7: // RLIMIT_NOFILE
		cur, max = maxFDs, maxFDs
	}
	if err := m.Write(old, append(u64(cur), u64(max)...)); err != nil {
		return errno(EFAULT), nil
	}
	return 0, nil
}

func (p *Process) prctl(m Machine, op, arg uint64) (uint64, error) {
	switch op {
	case 16: // PR_GET_NAME
		name := path.Base(p.cfg.Args[0])
		if len(name) > 15 {
			name = name[:15]
		}
		if err := m.Write(arg, append([]byte(name), 0)); err != nil {
			return errno(EFAULT), nil
		}
		return 0, nil
	case 15: // PR_SET_NAME
		return 0, nil
	}
	return errno(EINVAL), nil
}

func (p *Process) uname(m Machine, addr uint64) (uint64, error) {
	b := make([]byte, 65*6)
	for i, s := range []string{"Linux", "hvft", "6.1.0-hvft", "#1 SMP hvft", "x86_64", "(none)"} {
		copy(b[65*i:], s)
	}
	if err := m.Write(addr, b); err != nil {
		return errno(EFAULT), nil
	}
	return 0, nil
}

func (p *Process) sysinfo(m Machine, addr uint64) (uint64, error) {
	b := make([]byte, 112)
	le := binary.LittleEndian
	le.PutUint64(b[32:], 1<<30) // totalram
	le.PutUint64(b[40:], 1<<29) // freeram
	le.PutUint16(b[80:], 1)     // procs
	le.PutUint32(b[104:], 1)    // mem_unit
	if err := m.Write(addr, b); err != nil {
		return errno(EFAULT), nil
	}
	return 0, nil
}

// clock reads a clock from the environment; monotonic clocks never go
// back, even across a failover to a host whose clock is behind.
func (p *Process) clock(m Machine, id uint64) (int64, error) {
	r, err := m.Ask(Call{Op: OpClock, Flags: id})
	if err != nil {
		return 0, err
	}
	ns := r.Value
	if id != clockRealtime && id != 5 && id != 8 { // not REALTIME, REALTIME_COARSE, REALTIME_ALARM
		if ns < p.lastMono {
			ns = p.lastMono
		}
		p.lastMono = ns
	}
	return ns, nil
}

func (p *Process) clockGettime(m Machine, id, addr uint64) (uint64, error) {
	if id > 11 {
		return errno(EINVAL), nil
	}
	ns, err := p.clock(m, id)
	if err != nil {
		return 0, err
	}
	if err := m.Write(addr, timespec(ns)); err != nil {
		return errno(EFAULT), nil
	}
	return 0, nil
}

func (p *Process) gettimeofday(m Machine, addr uint64) (uint64, error) {
	if addr == 0 {
		return 0, nil
	}
	ns, err := p.clock(m, clockRealtime)
	if err != nil {
		return 0, err
	}
	b := append(u64(uint64(ns/1e9)), u64(uint64(ns%1e9/1e3))...)
	if err := m.Write(addr, b); err != nil {
		return errno(EFAULT), nil
	}
	return 0, nil
}

func (p *Process) getrandom(m Machine, buf, count uint64) (uint64, error) {
	count = min(count, 256)
	r, err := m.Ask(Call{Op: OpRandom, Size: count})
	if err != nil {
		return 0, err
	}
	if r.Value < 0 {
		return uint64(r.Value), nil
	}
	if err := m.Write(buf, r.Data); err != nil {
		return errno(EFAULT), nil
	}
	return uint64(len(r.Data)), nil
}

func (p *Process) sendfile(m Machine, out, in int, offAddr, count uint64) (uint64, error) {
	src, dst := p.file(in), p.file(out)
	if src == nil || dst == nil || src.kind != kindFile || dst.flags&oAccMode == oRdonly && dst.kind != kindStdout && dst.kind != kindStderr {
		return errno(EBADF), nil
	}
	off := src.off
	if offAddr != 0 {
		var b [8]byte
		if err := m.Read(offAddr, b[:]); err != nil {
			return errno(EFAULT), nil
		}
		off = int64(binary.LittleEndian.Uint64(b[:]))
	}
	r, err := m.Ask(Call{Op: OpRead, Path: src.path, Off: off, Size: min(count, MaxTransfer)})
	if err != nil || r.Value <= 0 {
		return uint64(r.Value), err
	}
	n, err := p.writeData(m, dst, r.Data, -1)
	if err != nil || int64(n) < 0 {
		return n, err
	}
	if offAddr != 0 {
		if err := m.Write(offAddr, u64(uint64(off)+n)); err != nil {
			return errno(EFAULT), nil
		}
	} else {
		src.off = off + int64(n)
	}
	return n, nil
}

// fdOp performs c on the file behind a descriptor.
func (p *Process) fdOp(m Machine, fdn int, c Call) (uint64, error) {
	f := p.file(fdn)
	if f == nil {
		return errno(EBADF), nil
	}
	if f.kind != kindFile && f.kind != kindDir {
		return 0, nil // a stream's mode or owner is the host's business
	}
	c.Path = f.path
	return p.ask(m, c)
}

func (p *Process) chown(m Machine, dirfd int, pathAddr, uid, gid, flags uint64) (uint64, error) {
	if flags&atEmptyPath != 0 {
		if s, _ := p.readString(m, pathAddr); s == "" {
			return p.fdOp(m, dirfd, Call{Op: OpChown, Off: int64(int32(uid)), Size: uint64(int64(int32(gid)))})
		}
	}
	pth, e := p.pathArg(m, dirfd, pathAddr)
	if e != 0 {
		return errno(e), nil
	}
	return p.ask(m, Call{Op: OpChown, Path: pth, Off: int64(int32(uid)), Size: uint64(int64(int32(gid))), Flags: flags & atSymlinkNofoll})
}

// utimensat sets times from the program's timespecs (UTIME_NOW and
// UTIME_OMIT as on Linux); a NULL path names the descriptor.
func (p *Process) utimensat(m Machine, dirfd int, pathAddr, times, flags uint64) (uint64, error) {
	var pth string
	if pathAddr == 0 {
		f := p.file(dirfd)
		if f == nil {
			return errno(EBADF), nil
		}
		if f.kind != kindFile && f.kind != kindDir {
			return 0, nil
		}
		pth = f.path
	} else {
		var e int
		if pth, e = p.pathArg(m, dirfd, pathAddr); e != 0 {
			return errno(e), nil
		}
	}
	data := make([]byte, 32)
	if times == 0 {
		for i := 0; i < 2; i++ {
			binary.LittleEndian.PutUint64(data[16*i+8:], utimeNow)
		}
	} else if err := m.Read(times, data); err != nil {
		return errno(EFAULT), nil
	}
	return p.ask(m, Call{Op: OpUtimes, Path: pth, Data: data, Flags: flags & atSymlinkNofoll})
}

func (p *Process) symlink(m Machine, targetAddr uint64, dirfd int, pathAddr uint64) (uint64, error) {
	target, e := p.readString(m, targetAddr)
	if e != 0 {
		return errno(e), nil
	}
	pth, e := p.pathArg(m, dirfd, pathAddr)
	if e != 0 {
		return errno(e), nil
	}
	return p.ask(m, Call{Op: OpSymlink, Path: pth, Path2: target})
}

func (p *Process) link(m Machine, oldfd int, oldAddr uint64, newfd int, newAddr uint64) (uint64, error) {
	return p.twoPaths(m, OpLink, oldfd, oldAddr, newfd, newAddr)
}

// maxSleep bounds one sleep request: a longer sleep is several.
const maxSleep = int64(time.Hour)

// sleep asks the environment to let the time pass: the live side sleeps,
// a replay does not wait (the answer says the sleep is over). An absolute
// deadline (TIMER_ABSTIME) is turned into a duration against the clock.
func (p *Process) sleep(m Machine, clock, flags, req uint64) (uint64, error) {
	var ts [16]byte
	if err := m.Read(req, ts[:]); err != nil {
		return errno(EFAULT), nil
	}
	sec, nsec := int64(binary.LittleEndian.Uint64(ts[:])), int64(binary.LittleEndian.Uint64(ts[8:]))
	if sec < 0 || nsec < 0 || nsec >= 1e9 {
		return errno(EINVAL), nil
	}
	if sec > math.MaxInt64/int64(time.Second)-1 {
		sec = math.MaxInt64/int64(time.Second) - 1
	}
	d := sec*1e9 + nsec
	if flags&1 != 0 { // TIMER_ABSTIME
		now, err := p.clock(m, clock)
		if err != nil {
			return 0, err
		}
		d = max(0, d-now)
	}
	d = min(d, maxSleep)
	if d == 0 {
		return 0, nil
	}
	return p.ask(m, Call{Op: OpSleep, Off: d})
}

// zeroOut writes n zero bytes at addr (0: nothing) and returns 0.
func (p *Process) zeroOut(m Machine, addr, n uint64) (uint64, error) {
	if addr != 0 {
		if err := m.Write(addr, make([]byte, n)); err != nil {
			return errno(EFAULT), nil
		}
	}
	return 0, nil
}

const (
	pollIn   = 0x1
	pollOut  = 0x4
	pollHup  = 0x10
	pollNval = 0x20
)

// ready says which of events a descriptor has now. A single-threaded
// process has nothing to wait for: files and the host's streams are
// always ready (a read of standard input waits in the read itself, as it
// would in the poll), a pipe by its buffer.
func (p *Process) ready(fdn int, events uint16) uint16 {
	f := p.file(fdn)
	if f == nil {
		return pollNval
	}
	var r uint16
	switch f.kind {
	case kindPipeRead:
		if len(f.pipe.buf) > 0 {
			r |= pollIn
		}
		if f.pipe.writers == 0 {
			r |= pollHup
		}
	case kindPipeWrite:
		if f.pipe.readers > 0 {
			r |= pollOut
		}
	case kindStdin:
		r |= pollIn
	case kindStdout, kindStderr:
		r |= pollOut
	default:
		r |= pollIn | pollOut
	}
	return r & (events | pollHup | pollNval)
}

func (p *Process) poll(m Machine, fds, n uint64) (uint64, error) {
	if n > maxFDs {
		return errno(EINVAL), nil
	}
	buf := make([]byte, 8*n)
	if err := m.Read(fds, buf); err != nil {
		return errno(EFAULT), nil
	}
	count := uint64(0)
	for i := uint64(0); i < n; i++ {
		e := buf[8*i:]
		fdn := int(int32(binary.LittleEndian.Uint32(e)))
		rev := uint16(0)
		if fdn >= 0 {
			rev = p.ready(fdn, binary.LittleEndian.Uint16(e[4:]))
		}
		binary.LittleEndian.PutUint16(e[6:], rev)
		if rev != 0 {
			count++
		}
	}
	if err := m.Write(fds, buf); err != nil {
		return errno(EFAULT), nil
	}
	return count, nil
}

// selectFDs is select and pselect6 over the same readiness as poll.
func (p *Process) selectFDs(m Machine, nfds int, readfds, writefds, exceptfds uint64) (uint64, error) {
	if nfds < 0 || nfds > maxFDs {
		return errno(EINVAL), nil
	}
	size := uint64((nfds + 63) / 64 * 8)
	count := uint64(0)
	for _, set := range []struct {
		addr   uint64
		events uint16
	}{{readfds, pollIn}, {writefds, pollOut}, {exceptfds, 0}} {
		if set.addr == 0 || size == 0 {
			continue
		}
		bits := make([]byte, size)
		if err := m.Read(set.addr, bits); err != nil {
			return errno(EFAULT), nil
		}
		for fdn := 0; fdn < nfds; fdn++ {
			if bits[fdn/8]&(1<<(fdn%8)) == 0 {
				continue
			}
			r := p.ready(fdn, set.events)
			if r&pollNval != 0 {
				return errno(EBADF), nil
			}
			if set.events == 0 || r&(set.events|pollHup) == 0 {
				bits[fdn/8] &^= 1 << (fdn % 8)
				continue
			}
			count++
		}
		if err := m.Write(set.addr, bits); err != nil {
			return errno(EFAULT), nil
		}
	}
	return count, nil
}
