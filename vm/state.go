package vm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/zeebo/xxh3"

	"hvft/vm/uc"
)

// cpuReg is one register of the CPU state a replica must match.
type cpuReg struct {
	reg  uc.Reg
	name string
}

// scalarRegs are the registers of at most 64 bits that make up the CPU
// state, in a fixed order shared by hash and snapshot. Left out, each for
// a reason TestStateCoversEveryRegister checks: CR1, DR4 and DR5 (aliases
// or reserved), CR8 (reads as 0 without an APIC), segment bases other than
// FS and GS (ignored in long mode and reloaded from the GDT with the
// selector), and wider views of registers listed here.
var scalarRegs = []cpuReg{
	{uc.RAX, "rax"}, {uc.RBX, "rbx"}, {uc.RCX, "rcx"}, {uc.RDX, "rdx"},
	{uc.RSI, "rsi"}, {uc.RDI, "rdi"}, {uc.RBP, "rbp"}, {uc.RSP, "rsp"},
	{uc.R8, "r8"}, {uc.R9, "r9"}, {uc.R10, "r10"}, {uc.R11, "r11"},
	{uc.R12, "r12"}, {uc.R13, "r13"}, {uc.R14, "r14"}, {uc.R15, "r15"},
	{uc.RIP, "rip"}, {uc.RFLAGS, "rflags"},
	{uc.CS, "cs"}, {uc.DS, "ds"}, {uc.ES, "es"}, {uc.FS, "fs"}, {uc.GS, "gs"}, {uc.SS, "ss"},
	{uc.FSBase, "fs_base"}, {uc.GSBase, "gs_base"},
	{uc.CR0, "cr0"}, {uc.CR2, "cr2"}, {uc.CR3, "cr3"}, {uc.CR4, "cr4"},
	{uc.DR0, "dr0"}, {uc.DR1, "dr1"}, {uc.DR2, "dr2"}, {uc.DR3, "dr3"}, {uc.DR6, "dr6"}, {uc.DR7, "dr7"},
	{uc.FPCW, "fpcw"}, {uc.FPSW, "fpsw"}, {uc.FPTAG, "fptag"},
	{uc.FIP, "fip"}, {uc.FCS, "fcs"}, {uc.FDP, "fdp"}, {uc.FDS, "fds"}, {uc.FOP, "fop"},
	{uc.MXCSR, "mxcsr"},
}

// x86 model-specific registers a guest can set and read back.
const (
	msrSysenterCS   = 0x174
	msrSysenterESP  = 0x175
	msrSysenterEIP  = 0x176
	msrPAT          = 0x277
	msrEFER         = 0xC0000080
	msrSTAR         = 0xC0000081
	msrLSTAR        = 0xC0000082
	msrCSTAR        = 0xC0000083
	msrFMASK        = 0xC0000084
	msrKernelGSBase = 0xC0000102
	msrTSCAux       = 0xC0000103
)

// stateMSRs are the MSRs in the CPU state, EFER first: a restore must set
// long mode before segment registers. IA32_TSC is left out on purpose: it
// reads the host's clock (docs/board.md).
var stateMSRs = []struct {
	id   uint32
	name string
}{
	{msrEFER, "efer"}, {msrSTAR, "star"}, {msrLSTAR, "lstar"}, {msrCSTAR, "cstar"}, {msrFMASK, "fmask"},
	{msrKernelGSBase, "kernel_gs_base"}, {msrTSCAux, "tsc_aux"},
	{msrSysenterCS, "sysenter_cs"}, {msrSysenterESP, "sysenter_esp"}, {msrSysenterEIP, "sysenter_eip"},
	{msrPAT, "pat"},
}

// stateMMRs are the descriptor-table and task registers.
var stateMMRs = []cpuReg{{uc.GDTR, "gdtr"}, {uc.IDTR, "idtr"}, {uc.LDTR, "ldtr"}, {uc.TR, "tr"}}

var scalarRegIDs = func() []uc.Reg {
	out := make([]uc.Reg, len(scalarRegs))
	for i, r := range scalarRegs {
		out[i] = r.reg
	}
	return out
}()

// Register is a named register value, for dumps.
type Register struct {
	Name  string `json:"name"`
	Value uint64 `json:"value"`
}

// Registers returns the general, control, debug, segment and FPU/SSE
// control registers and the MSRs by name.
func (m *Machine) Registers() ([]Register, error) {
	var out []Register
	err := m.call(func() error {
		vals := make([]uint64, len(scalarRegs))
		if err := m.eng.RegReadBatch(scalarRegIDs, vals); err != nil {
			return err
		}
		for i, v := range vals {
			out = append(out, Register{Name: scalarRegs[i].name, Value: v})
		}
		for _, msr := range stateMSRs {
			v, err := m.eng.ReadMSR(msr.id)
			if err != nil {
				return err
			}
			out = append(out, Register{Name: msr.name, Value: v})
		}
		return nil
	})
	return out, err
}

// ReadMemory copies n bytes of guest RAM at addr.
func (m *Machine) ReadMemory(addr, n uint64) ([]byte, error) {
	if addr > m.cfg.RAMSize || n > m.cfg.RAMSize-addr {
		return nil, fmt.Errorf("memory range %#x+%#x lies outside RAM (%#x bytes)", addr, n, m.cfg.RAMSize)
	}
	out := make([]byte, n)
	err := m.call(func() error { copy(out, m.mem[addr:addr+n]); return nil })
	return out, err
}

// cpuState appends the CPU's state: scalar registers, descriptor tables,
// MSRs, x87 and SSE registers.
func (m *Machine) cpuState(buf []byte) ([]byte, error) {
	if m.stateReader == nil {
		// One call into C per hash, not one per register group: the
		// hash runs at every epoch boundary.
		r, err := m.eng.NewStateReader(stateRead)
		if err != nil {
			return nil, err
		}
		m.stateReader = r
	}
	st := &m.stateScratch
	if err := m.stateReader.Read(st); err != nil {
		return nil, err
	}
	for _, v := range st.Vals {
		buf = binary.LittleEndian.AppendUint64(buf, v)
	}
	for _, mmr := range st.MMRs {
		buf = binary.LittleEndian.AppendUint16(buf, mmr.Selector)
		buf = binary.LittleEndian.AppendUint64(buf, mmr.Base)
		buf = binary.LittleEndian.AppendUint32(buf, mmr.Limit)
		buf = binary.LittleEndian.AppendUint32(buf, mmr.Flags)
	}
	for _, v := range st.MSRs {
		buf = binary.LittleEndian.AppendUint64(buf, v)
	}
	wide := st.Wide
	for i := 0; i < 8; i++ {
		buf = append(buf, wide[16*i:16*i+10]...) // 80-bit x87 registers
	}
	return append(buf, wide[16*8:]...), nil
}

// stateRead is what cpuState reads: the registers, the descriptor-table
// registers, the MSRs and the wide registers, in the hash's order.
var stateRead = func() uc.StateRead {
	q := uc.StateRead{Regs: scalarRegIDs, Wide: wideRegs}
	for _, r := range stateMMRs {
		q.MMRs = append(q.MMRs, r.reg)
	}
	for _, msr := range stateMSRs {
		q.MSRs = append(q.MSRs, msr.id)
	}
	return q
}()

// wideRegs are ST0-7 then XMM0-15.
var wideRegs = func() []uc.Reg {
	var regs []uc.Reg
	for i := 0; i < 8; i++ {
		regs = append(regs, uc.ST(i))
	}
	for i := 0; i < 16; i++ {
		regs = append(regs, uc.XMM(i))
	}
	return regs
}()

// machineState appends everything but RAM and registers: the clock, epoch,
// answer count, halt state, interrupt shadow and devices.
func (m *Machine) machineState(buf []byte) ([]byte, error) {
	shadow, err := m.eng.InterruptShadow()
	if err != nil {
		return nil, err
	}
	buf = binary.LittleEndian.AppendUint64(buf, m.eng.Blocks())
	buf = binary.LittleEndian.AppendUint64(buf, m.epoch)
	buf = binary.LittleEndian.AppendUint64(buf, m.seq)
	buf = appendBool(buf, m.halted)
	buf = appendBool(buf, shadow)
	buf = m.board.encode(buf)
	if m.proc != nil {
		buf = append(buf, m.proc.State()...)
	}
	return buf, nil
}

func appendBool(buf []byte, v bool) []byte {
	if v {
		return append(buf, 1)
	}
	return append(buf, 0)
}

// hash digests the CPU, the clock, the devices and RAM. RAM enters as its
// running digest (ramDigest), brought up to date here from the pages
// written since the last boundary, so every epoch's hash covers it.
func (m *Machine) hash() (Digest, error) {
	buf, err := m.cpuState(make([]byte, 0, 1024))
	if err != nil {
		return Digest{}, err
	}
	if buf, err = m.machineState(buf); err != nil {
		return Digest{}, err
	}
	m.syncRAM()
	buf = binary.LittleEndian.AppendUint64(buf, m.ram.sum.Lo)
	buf = binary.LittleEndian.AppendUint64(buf, m.ram.sum.Hi)
	return Digest(xxh3.Hash128(buf).Bytes()), nil
}

// Hash returns the state hash now.
func (m *Machine) Hash() (Digest, error) {
	var d Digest
	err := m.call(func() error {
		var err error
		d, err = m.hash()
		return err
	})
	return d, err
}

// snapshotMagic opens a snapshot stream; SnapshotVersion, the layout of
// the machine's state in it (a joining backup's state transfer), follows.
const (
	snapshotMagic   = "HVFTSNAP"
	SnapshotVersion = 2
)

// SnapshotStream assembles a snapshot from a state body (Boundary.State)
// and a RAM image, for Restore.
func SnapshotStream(ramSize uint64, body, ram []byte) io.Reader {
	hdr := append([]byte(snapshotMagic), 0, 0, 0, 0)
	binary.LittleEndian.PutUint32(hdr[8:], SnapshotVersion)
	hdr = binary.LittleEndian.AppendUint64(hdr, ramSize)
	hdr = binary.LittleEndian.AppendUint32(hdr, uint32(len(body)))
	return io.MultiReader(bytes.NewReader(hdr), bytes.NewReader(body), bytes.NewReader(ram))
}

// Snapshot writes the whole machine (CPU, devices, clock, epoch, answer
// count, RAM; not the TLB, which is a cache) to w.
func (m *Machine) Snapshot(w io.Writer) error {
	return m.call(func() error {
		hdr := append([]byte(snapshotMagic), 0, 0, 0, 0)
		binary.LittleEndian.PutUint32(hdr[8:], SnapshotVersion)
		hdr = binary.LittleEndian.AppendUint64(hdr, m.cfg.RAMSize)
		body, err := m.stateBody()
		if err != nil {
			return err
		}
		hdr = binary.LittleEndian.AppendUint32(hdr, uint32(len(body)))
		for _, part := range [][]byte{hdr, body, m.mem} {
			if _, err := w.Write(part); err != nil {
				return fmt.Errorf("writing snapshot: %w", err)
			}
		}
		return nil
	})
}

// Restore replaces the machine's state with a snapshot read from r. The
// machine must have the same RAM size as the one snapshotted.
func (m *Machine) Restore(r io.Reader) error {
	return m.call(func() error {
		hdr := make([]byte, 24)
		if _, err := io.ReadFull(r, hdr); err != nil {
			return fmt.Errorf("reading snapshot header: %w", err)
		}
		if string(hdr[:8]) != snapshotMagic {
			return errors.New("not an hvft snapshot")
		}
		if v := binary.LittleEndian.Uint32(hdr[8:]); v != SnapshotVersion {
			return fmt.Errorf("snapshot version %d: this build reads version %d", v, SnapshotVersion)
		}
		if ram := binary.LittleEndian.Uint64(hdr[12:]); ram != m.cfg.RAMSize {
			return fmt.Errorf("snapshot of a machine with %d bytes of RAM; this one has %d", ram, m.cfg.RAMSize)
		}
		n := binary.LittleEndian.Uint32(hdr[20:])
		if n > maxStateBody {
			return fmt.Errorf("snapshot state block of %d bytes is implausibly large", n)
		}
		body := make([]byte, n)
		if _, err := io.ReadFull(r, body); err != nil {
			return fmt.Errorf("reading snapshot state: %w", err)
		}
		// RAM first: loading segment selectors reads the GDT. It is read in
		// place: a restore that fails past this point leaves the machine
		// unusable, and it refuses to run.
		if _, err := io.ReadFull(r, m.mem); err != nil {
			m.fault = fmt.Errorf("a restore failed while reading RAM: %w", err)
			return fmt.Errorf("reading snapshot RAM: %w", err)
		}
		// Invalidating the range costs a walk of the pages with code;
		// Unicorn's whole-cache flush (tb_flush) costs seconds with 256 MiB.
		// A Linux program's code is found through its page table, which
		// the restore replaces: there only the flush will do.
		if m.proc != nil {
			if err := m.eng.FlushCode(); err != nil {
				return err
			}
		} else if err := m.eng.InvalidateCode(0, m.cfg.RAMSize); err != nil {
			return err
		}
		if err := m.eng.FlushTLB(); err != nil {
			return err
		}
		m.ram.init(m.mem)
		if err := m.restoreState(body); err != nil {
			m.fault = fmt.Errorf("a restore failed: %w", err)
			return err
		}
		return nil
	})
}

func (m *Machine) restoreState(body []byte) error {
	r := reader{buf: body}
	vals := make([]uint64, len(scalarRegs))
	for i := range vals {
		vals[i] = r.u64()
	}
	mmrs := make([]uc.MMR, len(stateMMRs))
	for i := range mmrs {
		mmrs[i] = uc.MMR{Selector: r.u16(), Base: r.u64(), Limit: r.u32(), Flags: r.u32()}
	}
	msrs := make([]uint64, len(stateMSRs))
	for i := range msrs {
		msrs[i] = r.u64()
	}
	var st [8][16]byte
	for i := range st {
		copy(st[i][:], r.bytes(10))
	}
	var xmm [16][16]byte
	for i := range xmm {
		copy(xmm[i][:], r.bytes(16))
	}
	blocks, epoch, seq := r.u64(), r.u64(), r.u64()
	halted, shadow := r.u8(), r.u8()
	if r.err != nil {
		return fmt.Errorf("snapshot state: %w", r.err)
	}
	if halted > 1 || shadow > 1 {
		return fmt.Errorf("snapshot state: halt flag %d, shadow flag %d (want 0 or 1)", halted, shadow)
	}
	board, rest, err := decodeBoard(r.buf)
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	if err := board.validate(m.cfg.RAMSize, m.cfg.DiskSectors); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	if m.proc != nil {
		if err := m.restoreLinux(rest); err != nil {
			return fmt.Errorf("snapshot: %w", err)
		}
	}
	// Descriptor tables, EFER and control registers first: loading a
	// segment selector reads its descriptor through the GDT, in the mode
	// EFER sets.
	for i, reg := range stateMMRs[:2] {
		if err := m.eng.WriteMMR(reg.reg, mmrs[i]); err != nil {
			return err
		}
	}
	for i, msr := range stateMSRs {
		if err := m.eng.WriteMSR(msr.id, msrs[i]); err != nil {
			return err
		}
	}
	if err := m.eng.RegWriteBatch(scalarRegIDs, vals); err != nil {
		return err
	}
	for i, reg := range stateMMRs[2:] {
		if err := m.eng.WriteMMR(reg.reg, mmrs[i+2]); err != nil {
			return err
		}
	}
	for i := range st {
		if err := m.eng.RegWriteBytes(uc.ST(i), st[i][:]); err != nil {
			return err
		}
	}
	for i := range xmm {
		if err := m.eng.RegWriteBytes(uc.XMM(i), xmm[i][:]); err != nil {
			return err
		}
	}
	if err := m.eng.SetInterruptShadow(shadow == 1); err != nil {
		return err
	}
	m.eng.SetBlocks(blocks)
	// Copy into the board in place: an environment may hold a pointer to it.
	m.epoch, m.seq, m.halted, *m.board = epoch, seq, halted == 1, *board
	m.fault = nil
	if m.proc != nil {
		// Loading SS made the CPU ring 0 again.
		return m.eng.SetCPL(3)
	}
	return nil
}

// maxStateBody bounds a snapshot's state block: a Linux program's carries
// its page table (17 bytes a page).
const maxStateBody = 1<<20 + 17*(MaxRAMSize/uc.PageSize)

// stateBody is a snapshot's state: CPU, machine and devices, and for a
// Linux program its page table and physical pages.
func (m *Machine) stateBody() ([]byte, error) {
	body, err := m.cpuState(nil)
	if err != nil {
		return nil, err
	}
	if body, err = m.machineState(body); err != nil {
		return nil, err
	}
	if m.proc != nil {
		body = m.linuxMemoryState(body)
	}
	return body, nil
}
