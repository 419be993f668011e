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

// msrEFER is the extended feature enable register (long mode, NX).
const msrEFER = 0xC0000080

// scalarRegs are the registers of at most 64 bits that make up the CPU
// state a replica must match, in a fixed order shared by hash and snapshot.
var scalarRegs = []uc.Reg{
	uc.RAX, uc.RBX, uc.RCX, uc.RDX, uc.RSI, uc.RDI, uc.RBP, uc.RSP,
	uc.R8, uc.R9, uc.R10, uc.R11, uc.R12, uc.R13, uc.R14, uc.R15,
	uc.RIP, uc.RFLAGS,
	uc.CS, uc.DS, uc.ES, uc.FS, uc.GS, uc.SS, uc.FSBase, uc.GSBase,
	uc.CR0, uc.CR2, uc.CR3, uc.CR4,
	uc.FPCW, uc.FPSW, uc.FPTAG, uc.MXCSR,
}

// scalarRegNames names scalarRegs, in order.
var scalarRegNames = []string{
	"rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
	"r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
	"rip", "rflags",
	"cs", "ds", "es", "fs", "gs", "ss", "fs_base", "gs_base",
	"cr0", "cr2", "cr3", "cr4",
	"fpcw", "fpsw", "fptag", "mxcsr",
}

// Register is a named register value, for dumps.
type Register struct {
	Name  string `json:"name"`
	Value uint64 `json:"value"`
}

// Registers returns the general, control, segment and FPU/SSE control
// registers by name.
func (m *Machine) Registers() ([]Register, error) {
	var out []Register
	err := m.call(func() error {
		vals := make([]uint64, len(scalarRegs))
		if err := m.eng.RegReadBatch(scalarRegs, vals); err != nil {
			return err
		}
		for i, v := range vals {
			out = append(out, Register{Name: scalarRegNames[i], Value: v})
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
	err := m.call(func() error { copy(out, m.ram[addr:addr+n]); return nil })
	return out, err
}

// cpuState appends the CPU's state: scalar registers, descriptor tables,
// EFER, x87 and SSE registers.
func (m *Machine) cpuState(buf []byte) ([]byte, error) {
	vals := make([]uint64, len(scalarRegs))
	if err := m.eng.RegReadBatch(scalarRegs, vals); err != nil {
		return nil, err
	}
	for _, v := range vals {
		buf = binary.LittleEndian.AppendUint64(buf, v)
	}
	for _, r := range []uc.Reg{uc.GDTR, uc.IDTR} {
		mmr, err := m.eng.ReadMMR(r)
		if err != nil {
			return nil, err
		}
		buf = binary.LittleEndian.AppendUint64(buf, mmr.Base)
		buf = binary.LittleEndian.AppendUint32(buf, mmr.Limit)
	}
	efer, err := m.eng.ReadMSR(msrEFER)
	if err != nil {
		return nil, err
	}
	buf = binary.LittleEndian.AppendUint64(buf, efer)
	var wide [16 * 24]byte
	if err := m.eng.RegReadWideBatch(wideRegs, wide[:]); err != nil {
		return nil, err
	}
	for i := 0; i < 8; i++ {
		buf = append(buf, wide[16*i:16*i+10]...) // 80-bit x87 registers
	}
	return append(buf, wide[16*8:]...), nil
}

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

// machineState appends everything but RAM and CPU: the clock, epoch,
// answer count, halt state and devices.
func (m *Machine) machineState(buf []byte) []byte {
	buf = binary.LittleEndian.AppendUint64(buf, m.eng.Blocks())
	buf = binary.LittleEndian.AppendUint64(buf, m.epoch)
	buf = binary.LittleEndian.AppendUint64(buf, m.seq)
	if m.halted {
		buf = append(buf, 1)
	} else {
		buf = append(buf, 0)
	}
	return m.board.encode(buf)
}

// hash digests the CPU, the clock and the devices, and RAM when asked. The
// two are hashed apart (RAM with xxh3's 128-bit hash, the fastest well-kept
// hash we found for 16 MiB and up) and folded, so that a RAM-less hash is
// cheap enough for every epoch.
func (m *Machine) hash(withRAM bool) (Digest, error) {
	buf, err := m.cpuState(make([]byte, 0, 1024))
	if err != nil {
		return Digest{}, err
	}
	buf = m.machineState(buf)
	if withRAM {
		r := xxh3.Hash128(m.ram).Bytes()
		buf = append(buf, r[:]...)
	}
	return Digest(xxh3.Hash128(buf).Bytes()), nil
}

// Hash returns the state hash now, with or without RAM.
func (m *Machine) Hash(withRAM bool) (Digest, error) {
	var d Digest
	err := m.call(func() error {
		var err error
		d, err = m.hash(withRAM)
		return err
	})
	return d, err
}

// snapshotMagic opens a snapshot stream; the version follows it.
const (
	snapshotMagic   = "HVFTSNAP"
	snapshotVersion = 1
)

// SnapshotStream assembles a snapshot from a state body (Boundary.State)
// and a RAM image, for Restore.
func SnapshotStream(ramSize uint64, body, ram []byte) io.Reader {
	hdr := append([]byte(snapshotMagic), 0, 0, 0, 0)
	binary.LittleEndian.PutUint32(hdr[8:], snapshotVersion)
	hdr = binary.LittleEndian.AppendUint64(hdr, ramSize)
	hdr = binary.LittleEndian.AppendUint32(hdr, uint32(len(body)))
	return io.MultiReader(bytes.NewReader(hdr), bytes.NewReader(body), bytes.NewReader(ram))
}

// Snapshot writes the whole machine (CPU, devices, clock, epoch, answer
// count, RAM; not the TLB, which is a cache) to w.
func (m *Machine) Snapshot(w io.Writer) error {
	return m.call(func() error {
		hdr := append([]byte(snapshotMagic), 0, 0, 0, 0)
		binary.LittleEndian.PutUint32(hdr[8:], snapshotVersion)
		hdr = binary.LittleEndian.AppendUint64(hdr, m.cfg.RAMSize)
		body, err := m.cpuState(nil)
		if err != nil {
			return err
		}
		body = m.machineState(body)
		hdr = binary.LittleEndian.AppendUint32(hdr, uint32(len(body)))
		for _, part := range [][]byte{hdr, body, m.ram} {
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
		if v := binary.LittleEndian.Uint32(hdr[8:]); v != snapshotVersion {
			return fmt.Errorf("snapshot version %d: this build reads version %d", v, snapshotVersion)
		}
		if ram := binary.LittleEndian.Uint64(hdr[12:]); ram != m.cfg.RAMSize {
			return fmt.Errorf("snapshot of a machine with %d bytes of RAM; this one has %d", ram, m.cfg.RAMSize)
		}
		n := binary.LittleEndian.Uint32(hdr[20:])
		if n > 1<<20 {
			return fmt.Errorf("snapshot state block of %d bytes is implausibly large", n)
		}
		body := make([]byte, n)
		if _, err := io.ReadFull(r, body); err != nil {
			return fmt.Errorf("reading snapshot state: %w", err)
		}
		ram := make([]byte, m.cfg.RAMSize)
		if _, err := io.ReadFull(r, ram); err != nil {
			return fmt.Errorf("reading snapshot RAM: %w", err)
		}
		copy(m.ram, ram) // first: loading segment selectors reads the GDT
		return m.restoreState(body)
	})
}

func (m *Machine) restoreState(body []byte) error {
	r := reader{buf: body}
	vals := make([]uint64, len(scalarRegs))
	for i := range vals {
		vals[i] = r.u64()
	}
	var mmrs [2]uc.MMR
	for i := range mmrs {
		mmrs[i].Base, mmrs[i].Limit = r.u64(), r.u32()
	}
	efer := r.u64()
	var st [8][16]byte
	for i := range st {
		copy(st[i][:], r.bytes(10))
	}
	var xmm [16][16]byte
	for i := range xmm {
		copy(xmm[i][:], r.bytes(16))
	}
	blocks, epoch, seq := r.u64(), r.u64(), r.u64()
	halted := r.u8() != 0
	if r.err != nil {
		return fmt.Errorf("snapshot state: %w", r.err)
	}
	board, _, err := decodeBoard(r.buf)
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	// Descriptor tables and control registers first: loading a segment
	// selector reads its descriptor through the GDT.
	for i, reg := range []uc.Reg{uc.GDTR, uc.IDTR} {
		if err := m.eng.WriteMMR(reg, mmrs[i]); err != nil {
			return err
		}
	}
	if err := m.eng.WriteMSR(msrEFER, efer); err != nil {
		return err
	}
	if err := m.eng.RegWriteBatch(scalarRegs, vals); err != nil {
		return err
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
	m.eng.SetBlocks(blocks)
	// Copy into the board in place: an environment may hold a pointer to it.
	m.epoch, m.seq, m.halted, *m.board = epoch, seq, halted, *board
	m.fault = nil
	return nil
}
