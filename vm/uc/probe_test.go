package uc

import (
	"runtime"
	"testing"
	"unsafe"
)

type probeHandler struct {
	e        *Engine
	ins      []uint64
	intrs    []uint32
	intrRIP  []uint64
	redirect uint64
	mapped   []uint64
	ram      []byte
}

func (p *probeHandler) In(port uint32, size int) uint32 {
	rip, _ := p.e.RegRead(RIP)
	p.ins = append(p.ins, rip)
	return 42
}
func (p *probeHandler) Out(port uint32, size int, value uint32) {}
func (p *probeHandler) CPUID() bool                             { return false }
func (p *probeHandler) Interrupt(intno uint32) {
	rip, _ := p.e.RegRead(RIP)
	p.intrs = append(p.intrs, intno)
	p.intrRIP = append(p.intrRIP, rip)
	if p.redirect != 0 {
		p.e.RegWrite(RIP, p.redirect)
	}
}
func (p *probeHandler) InvalidInstruction() bool {
	rip, _ := p.e.RegRead(RIP)
	p.intrs = append(p.intrs, 6)
	p.intrRIP = append(p.intrRIP, rip)
	if p.redirect != 0 {
		p.e.RegWrite(RIP, p.redirect)
		return true
	}
	return false
}
func (p *probeHandler) Mem(a Access, addr uint64, size int, value int64) bool {
	page := addr &^ 0xffff
	if page >= uint64(len(p.ram)) {
		return false
	}
	p.mapped = append(p.mapped, page)
	if err := p.e.MapPtr(page, 0x10000, ProtAll, unsafe.Pointer(&p.ram[page])); err != nil {
		panic(err)
	}
	return true
}

func TestProbe(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	e, err := Open()
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ram := make([]byte, 1<<20)
	p := &probeHandler{e: e, ram: ram}
	if err := e.Hooks(p); err != nil {
		t.Fatal(err)
	}
	code := []byte{
		0xb9, 0x64, 0, 0, 0, // mov ecx,100
		0xff, 0xc9, // dec ecx
		0x75, 0xfc, // jnz -4
		0x90,       // nop
		0xe4, 0x10, // in al, 0x10
		0xf4,       // hlt
		0x0f, 0x0b, // ud2  (at 0x100d)
		0xf4,                                           // hlt
		0x48, 0x8b, 0x04, 0x25, 0x00, 0x00, 0x08, 0x00, // mov rax,[0x80000] (at 0x1010)
		0xf4,
		0x31, 0xc9, 0xf7, 0xf1, // xor ecx,ecx; div ecx (at 0x1019)
		0xf4,
	}
	copy(ram[0x1000:], code)
	ram[0x80000] = 0x77
	e.SetBlockLimit(50)
	err = e.Start(0x1000, 0xffffffffffffffff, 0, 0)
	rip, _ := e.RegRead(RIP)
	rcx, _ := e.RegRead(RCX)
	t.Logf("limit run: err=%v blocks=%d hit=%v rip=%#x rcx=%d mapped=%x", err, e.Blocks(), e.BlockLimitHit(), rip, rcx, p.mapped)
	e.SetBlockLimit(0)
	err = e.Start(rip, 0xffffffffffffffff, 0, 0)
	rip, _ = e.RegRead(RIP)
	rcx, _ = e.RegRead(RCX)
	t.Logf("to hlt: err=%v blocks=%d rip=%#x rcx=%d ins=%x", err, e.Blocks(), rip, rcx, p.ins)
	err = e.Start(rip, 0xffffffffffffffff, 0, 0)
	rip, _ = e.RegRead(RIP)
	t.Logf("ud2 no redirect: err=%v blocks=%d rip=%#x intrs=%v intrRIP=%x", err, e.Blocks(), rip, p.intrs, p.intrRIP)
	p.redirect = 0x1010
	err = e.Start(0x100d, 0xffffffffffffffff, 0, 0)
	rip, _ = e.RegRead(RIP)
	rax, _ := e.RegRead(RAX)
	t.Logf("after ud2 redirect: err=%v rip=%#x rax=%#x", err, rip, rax)
	p.redirect = 0x1010
	err = e.Start(0x1019, 0xffffffffffffffff, 0, 0)
	rip, _ = e.RegRead(RIP)
	rax, _ = e.RegRead(RAX)
	t.Logf("div0 redirect: err=%v blocks=%d rip=%#x rax=%#x intrs=%v intrRIP=%x", err, e.Blocks(), rip, rax, p.intrs, p.intrRIP)
	p.redirect = 0
	err = e.Start(0x1019, 0xffffffffffffffff, 0, 0)
	rip, _ = e.RegRead(RIP)
	t.Logf("ud2 redirect: err=%v blocks=%d rip=%#x intrs=%v intrRIP=%x mapped=%x", err, e.Blocks(), rip, p.intrs, p.intrRIP, p.mapped)
}
