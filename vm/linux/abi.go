package linux

// System-call numbers of the x86-64 Linux ABI that the personality knows
// by name (the rest answer ENOSYS).
const (
	sysRead           = 0
	sysWrite          = 1
	sysOpen           = 2
	sysClose          = 3
	sysStat           = 4
	sysFstat          = 5
	sysLstat          = 6
	sysPoll           = 7
	sysLseek          = 8
	sysMmap           = 9
	sysMprotect       = 10
	sysMunmap         = 11
	sysBrk            = 12
	sysRtSigaction    = 13
	sysRtSigprocmask  = 14
	sysIoctl          = 16
	sysPread64        = 17
	sysPwrite64       = 18
	sysReadv          = 19
	sysWritev         = 20
	sysAccess         = 21
	sysPipe           = 22
	sysSelect         = 23
	sysSchedYield     = 24
	sysMremap         = 25
	sysMsync          = 26
	sysMadvise        = 28
	sysDup            = 32
	sysDup2           = 33
	sysNanosleep      = 35
	sysAlarm          = 37
	sysGetpid         = 39
	sysSendfile       = 40
	sysClone          = 56
	sysFork           = 57
	sysVfork          = 58
	sysExecve         = 59
	sysExit           = 60
	sysWait4          = 61
	sysKill           = 62
	sysUname          = 63
	sysFcntl          = 72
	sysFlock          = 73
	sysFsync          = 74
	sysFdatasync      = 75
	sysTruncate       = 76
	sysFtruncate      = 77
	sysGetcwd         = 79
	sysChdir          = 80
	sysFchdir         = 81
	sysRename         = 82
	sysMkdir          = 83
	sysRmdir          = 84
	sysCreat          = 85
	sysLink           = 86
	sysUnlink         = 87
	sysSymlink        = 88
	sysReadlink       = 89
	sysChmod          = 90
	sysFchmod         = 91
	sysChown          = 92
	sysFchown         = 93
	sysLchown         = 94
	sysUmask          = 95
	sysGettimeofday   = 96
	sysGetrlimit      = 97
	sysGetrusage      = 98
	sysSysinfo        = 99
	sysTimes          = 100
	sysGetuid         = 102
	sysSetuid         = 105
	sysSetgid         = 106
	sysGetgroups      = 115
	sysSetgroups      = 116
	sysSetresuid      = 117
	sysSetresgid      = 119
	sysGetpgid        = 121
	sysGetsid         = 124
	sysGetgid         = 104
	sysGeteuid        = 107
	sysGetegid        = 108
	sysSetpgid        = 109
	sysGetppid        = 110
	sysGetpgrp        = 111
	sysSetsid         = 112
	sysSigaltstack    = 131
	sysPrctl          = 157
	sysArchPrctl      = 158
	sysSetrlimit      = 160
	sysGettid         = 186
	sysTime           = 201
	sysFutex          = 202
	sysSchedGetaff    = 204
	sysGetdents64     = 217
	sysSetTidAddress  = 218
	sysFadvise64      = 221
	sysClockGettime   = 228
	sysClockGetres    = 229
	sysClockNanosleep = 230
	sysExitGroup      = 231
	sysTgkill         = 234
	sysOpenat         = 257
	sysMkdirat        = 258
	sysFchownat       = 260
	sysNewfstatat     = 262
	sysUnlinkat       = 263
	sysRenameat       = 264
	sysLinkat         = 265
	sysSymlinkat      = 266
	sysReadlinkat     = 267
	sysFchmodat       = 268
	sysFaccessat      = 269
	sysPselect6       = 270
	sysPpoll          = 271
	sysSetRobustList  = 273
	sysUtimensat      = 280
	sysDup3           = 292
	sysPipe2          = 293
	sysPrlimit64      = 302
	sysGetrandom      = 318
	sysStatx          = 332
	sysRseq           = 334
	sysClone3         = 435
	sysFaccessat2     = 439
	sysRenameat2      = 316
	sysCloseRange     = 436
)

// syscallNames names every call above, for the log and for docs/linux.md.
var syscallNames = map[uint64]string{
	sysRead: "read", sysWrite: "write", sysOpen: "open", sysClose: "close", sysStat: "stat", sysFstat: "fstat",
	sysLstat: "lstat", sysPoll: "poll", sysLseek: "lseek", sysMmap: "mmap", sysMprotect: "mprotect", sysMunmap: "munmap",
	sysBrk: "brk", sysRtSigaction: "rt_sigaction", sysRtSigprocmask: "rt_sigprocmask", sysIoctl: "ioctl",
	sysPread64: "pread64", sysPwrite64: "pwrite64", sysReadv: "readv", sysWritev: "writev", sysAccess: "access",
	sysPipe: "pipe", sysSelect: "select", sysMsync: "msync", sysAlarm: "alarm", sysFlock: "flock",
	sysSetsid: "setsid", sysGetpgid: "getpgid", sysGetsid: "getsid", sysSchedYield: "sched_yield", sysMremap: "mremap", sysMadvise: "madvise", sysDup: "dup",
	sysDup2: "dup2", sysNanosleep: "nanosleep", sysGetpid: "getpid", sysClone: "clone", sysFork: "fork",
	sysVfork: "vfork", sysExecve: "execve", sysExit: "exit", sysWait4: "wait4", sysKill: "kill", sysUname: "uname",
	sysFcntl: "fcntl", sysFsync: "fsync", sysFdatasync: "fdatasync", sysTruncate: "truncate", sysFtruncate: "ftruncate",
	sysGetcwd: "getcwd", sysChdir: "chdir", sysFchdir: "fchdir", sysRename: "rename", sysMkdir: "mkdir",
	sysRmdir: "rmdir", sysCreat: "creat", sysUnlink: "unlink", sysReadlink: "readlink", sysFchmod: "fchmod",
	sysUmask: "umask", sysGettimeofday: "gettimeofday", sysGetrlimit: "getrlimit", sysGetrusage: "getrusage",
	sysSysinfo: "sysinfo", sysTimes: "times", sysGetuid: "getuid", sysGetgid: "getgid", sysGeteuid: "geteuid",
	sysGetegid: "getegid", sysSetpgid: "setpgid", sysGetppid: "getppid", sysGetpgrp: "getpgrp",
	sysSigaltstack: "sigaltstack", sysPrctl: "prctl", sysArchPrctl: "arch_prctl", sysSetrlimit: "setrlimit",
	sysGettid: "gettid", sysTime: "time", sysFutex: "futex", sysSchedGetaff: "sched_getaffinity",
	sysGetdents64: "getdents64", sysSetTidAddress: "set_tid_address", sysFadvise64: "fadvise64",
	sysClockGettime: "clock_gettime", sysClockGetres: "clock_getres", sysClockNanosleep: "clock_nanosleep",
	sysExitGroup: "exit_group", sysTgkill: "tgkill", sysOpenat: "openat", sysMkdirat: "mkdirat",
	sysNewfstatat: "newfstatat", sysUnlinkat: "unlinkat", sysRenameat: "renameat", sysReadlinkat: "readlinkat",
	sysFaccessat: "faccessat", sysPselect6: "pselect6", sysPpoll: "ppoll", sysSetRobustList: "set_robust_list",
	sysUtimensat: "utimensat", sysDup3: "dup3", sysPipe2: "pipe2", sysPrlimit64: "prlimit64",
	sysGetrandom: "getrandom", sysStatx: "statx", sysRseq: "rseq", sysClone3: "clone3", sysFaccessat2: "faccessat2",
	sysRenameat2: "renameat2", sysCloseRange: "close_range",
}

// SyscallName names a system call number.
func SyscallName(nr uint64) string {
	if n, ok := syscallNames[nr]; ok {
		return n
	}
	return "syscall_" + itoa(nr)
}

func itoa(v uint64) string {
	if v == 0 {
		return "0"
	}
	var b [20]byte
	i := len(b)
	for v > 0 {
		i--
		b[i] = byte('0' + v%10)
		v /= 10
	}
	return string(b[i:])
}

// Errno values returned (negated) in RAX.
const (
	EPERM        = 1
	ENOENT       = 2
	EIO          = 5
	EBADF        = 9
	ECHILD       = 10
	EAGAIN       = 11
	ENOMEM       = 12
	EACCES       = 13
	EFAULT       = 14
	EEXIST       = 17
	ENOTDIR      = 20
	EISDIR       = 21
	EINVAL       = 22
	EMFILE       = 24
	ENOTTY       = 25
	ESPIPE       = 29
	ERANGE       = 34
	ENAMETOOLONG = 36
	ENOSYS       = 38
	ENOTEMPTY    = 39
)

// Open flags.
const (
	oAccMode   = 3
	oRdonly    = 0
	oWronly    = 1
	oRdwr      = 2
	oCreat     = 0o100
	oExcl      = 0o200
	oTrunc     = 0o1000
	oAppend    = 0o2000
	oNonblock  = 0o4000
	oDirectory = 0o200000
	oCloexec   = 0o2000000
)

// utimeNow is UTIME_NOW in a timespec's nanoseconds.
const utimeNow = (1 << 30) - 1

const (
	atFDCWD         = -100
	atSymlinkNofoll = 0x100
	atRemoveDir     = 0x200
	atEmptyPath     = 0x1000
)

// Auxiliary-vector keys.
const (
	atNull     = 0
	atPhdr     = 3
	atPhent    = 4
	atPhnum    = 5
	atPagesz   = 6
	atBase     = 7
	atFlags    = 8
	atEntry    = 9
	atUID      = 11
	atEUID     = 12
	atGID      = 13
	atEGID     = 14
	atPlatform = 15
	atHwcap    = 16
	atClktck   = 17
	atSecure   = 23
	atRandom   = 25
	atHwcap2   = 26
	atExecfn   = 31
)

// Memory protections (PROT_*), which are also Unicorn's.
type Prot uint8

// Protection bits.
const (
	ProtRead  Prot = 1
	ProtWrite Prot = 2
	ProtExec  Prot = 4
)

const (
	mapShared    = 0x01
	mapPrivate   = 0x02
	mapFixed     = 0x10
	mapAnonymous = 0x20
	mapFixedNoRe = 0x100000
	mremapMaymov = 1
	mremapFixed  = 2
)

// PageSize is the Linux page size.
const PageSize = 4096

// The address-space layout: the stack at the top, anonymous mappings below
// it growing down, brk above the program.
const (
	minMapAddr = 0x10000
	stackTop   = 0x7fff_ffff_f000
	stackMax   = 8 << 20
	mmapTop    = 0x7f00_0000_0000
)

// fakePID is the process ID the program sees (it is alone).
const fakePID = 1000
