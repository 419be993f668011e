package epoch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"reflect"
	"testing"
)

func sampleMessages() []Message {
	return []Message{
		{Type: TypeHello, Hello: &Hello{Config: MachineConfig{ImageDigest: [32]byte{1, 2}, ArgsDigest: [32]byte{3}, RAMSize: 16 << 20, EpochBlocks: 100000, BoardVersion: 1, DiskSectors: 8192, Engine: "2.1.1"}, Join: true}},
		{Type: TypeWelcome, Welcome: &Welcome{Accepted: false, Reason: "image digest differs"}},
		{Type: TypeAnswer, Answer: &Answer{Seq: 7, Kind: 1, Port: 0x520, Size: 4, Value: 0xdeadbeef, Regs: [4]uint32{1, 2, 3, 4}}},
		{Type: TypeEpochEnd, EpochEnd: &EpochEnd{Epoch: 3, Clock: 300000, RIP: 0x101000, Reason: 2, Answers: 7, Hash: [16]byte{9}, RAMHashed: true,
			Events: []Event{{IRQ: 0}, {IRQ: 1, Data: []byte("typed")}, {IRQ: 2, Arg: 7<<8 | 2, Data: make([]byte, 512)}}}},
		{Type: TypeAck, Ack: &Ack{Epoch: 3, Answers: 7, Executed: 2}},
		{Type: TypeHeartbeat},
		{Type: TypeRelease, Release: &Release{Output: 42}},
		{Type: TypeDivergence, Divergence: &Divergence{Epoch: 4, Clock: 5, RIP: 6, Detail: "state hash differs"}},
		{Type: TypeGoodbye, Goodbye: &Goodbye{ExitCode: 3, Hash: [16]byte{7, 7}}},
		{Type: TypeGoodbye, Goodbye: &Goodbye{Hash: [16]byte{8}, Stopped: "the guest did not power off within the epoch budget"}},
		{Type: TypeJoinRAM, JoinRAM: &JoinRAM{Offset: 1 << 20, Data: []byte("page")}},
		{Type: TypeJoinState, JoinState: &JoinState{Epoch: 9, Answers: 40, Hash: [16]byte{1}, State: []byte("cpu and devices")}},
	}
}

func TestCodecRoundTrip(t *testing.T) {
	var stream []byte
	for _, m := range sampleMessages() {
		var err error
		if stream, err = AppendFrame(stream, m); err != nil {
			t.Fatal(err)
		}
	}
	r := bytes.NewReader(stream)
	for _, want := range sampleMessages() {
		got, err := ReadFrame(r)
		if err != nil {
			t.Fatalf("%v: %v", want.Type, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%v: got %+v", want.Type, got)
		}
	}
	if _, err := ReadFrame(r); !errors.Is(err, io.EOF) {
		t.Fatalf("after the last frame: %v, want EOF", err)
	}
}

func TestCodecRejectsDamage(t *testing.T) {
	frame, _ := AppendFrame(nil, sampleMessages()[3])
	for i := 4; i < len(frame); i++ {
		bad := append([]byte(nil), frame...)
		bad[i] ^= 0x40
		if _, err := ReadFrame(bytes.NewReader(bad)); !errors.Is(err, ErrFrame) {
			t.Fatalf("flipped byte %d of %d accepted: %v", i, len(frame), err)
		}
	}
	for n := 5; n < len(frame); n++ {
		if _, err := ReadFrame(bytes.NewReader(frame[:n])); !errors.Is(err, ErrFrame) {
			t.Fatalf("frame cut to %d bytes: %v", n, err)
		}
	}
	huge := []byte{0xff, 0xff, 0xff, 0x7f}
	if _, err := ReadFrame(bytes.NewReader(huge)); !errors.Is(err, ErrFrame) {
		t.Fatalf("2 GiB length accepted: %v", err)
	}
	if _, err := AppendFrame(nil, Message{Type: TypeAnswer}); err == nil {
		t.Error("answer without body encoded")
	}
}

// FuzzReadFrame: no input panics, and whatever decodes re-encodes to the
// same frame.
func FuzzReadFrame(f *testing.F) {
	for _, m := range sampleMessages() {
		frame, _ := AppendFrame(nil, m)
		f.Add(frame)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ReadFrame(bytes.NewReader(data))
		if err != nil {
			return
		}
		again, err := AppendFrame(nil, m)
		if err != nil {
			t.Fatalf("decoded %v does not encode: %v", m.Type, err)
		}
		if !bytes.Equal(again, data[:len(again)]) {
			t.Fatalf("re-encoding differs")
		}
	})
}

func out(seq, epoch, answers uint64) Output {
	return Output{Seq: seq, Epoch: epoch, Answers: answers, Port: 0x500, Value: uint32('a' + seq)}
}

// TestOutputWaitsForAck: rule 3.
func TestOutputWaitsForAck(t *testing.T) {
	p := NewPrimary(Bounded, 4)
	p.Answer(Answer{Seq: 1})
	if act := p.Output(out(1, 1, 1)); len(act.Release) != 0 {
		t.Fatal("output released before the backup held answer 1")
	}
	if act := p.Output(out(2, 1, 1)); len(act.Release) != 0 {
		t.Fatal("second output overtook the first")
	}
	act, err := p.Ack(Ack{Epoch: 0, Answers: 1})
	if err != nil {
		t.Fatal(err)
	}
	if len(act.Release) != 2 || act.Release[0].Seq != 1 || act.Release[1].Seq != 2 {
		t.Fatalf("ack released %+v", act.Release)
	}
	if len(act.Send) != 1 || act.Send[0].Type != TypeRelease || act.Send[0].Release.Output != 2 {
		t.Fatalf("release watermark not announced: %+v", act.Send)
	}
	p.EndEpoch(EpochEnd{Epoch: 1, Answers: 1})
	if act := p.Output(out(3, 2, 1)); len(act.Release) != 0 {
		t.Fatal("output of epoch 2 released before epoch 1's end was acknowledged")
	}
	act, _ = p.Ack(Ack{Epoch: 1, Answers: 1})
	if len(act.Release) != 1 {
		t.Fatalf("released %+v", act.Release)
	}
	if _, err := p.Ack(Ack{Epoch: 5, Answers: 1}); err == nil {
		t.Error("ack of an epoch never sent accepted")
	}
}

// TestCommitWaitsForEveryEarlierRecord: rule 3b. An effect the guest
// waits on is performed only once the backup holds every answer before it
// and the end of the epoch before its own; alone, at once.
func TestCommitWaitsForEveryEarlierRecord(t *testing.T) {
	p := NewPrimary(Bounded, 4)
	p.Answer(Answer{Seq: 1})
	p.Answer(Answer{Seq: 2})
	if p.MayCommit(1, 2) {
		t.Fatal("commit allowed before the backup acknowledged anything")
	}
	p.Ack(Ack{Answers: 1})
	if p.MayCommit(1, 2) {
		t.Fatal("commit allowed with answer 2 unacknowledged")
	}
	if !p.MayCommit(1, 1) {
		t.Fatal("commit after answer 1 refused though answer 1 is held")
	}
	p.Ack(Ack{Answers: 2})
	if !p.MayCommit(1, 2) {
		t.Fatal("commit refused though every earlier answer is held")
	}
	p.EndEpoch(EpochEnd{Epoch: 1, Answers: 2})
	if p.MayCommit(2, 2) {
		t.Fatal("commit in epoch 2 allowed before epoch 1's end was held")
	}
	p.Ack(Ack{Epoch: 1, Answers: 2})
	if !p.MayCommit(2, 2) {
		t.Fatal("commit in epoch 2 refused after epoch 1's end was held")
	}
	p.Answer(Answer{Seq: 3})
	p.BackupLost()
	if !p.MayCommit(2, 3) {
		t.Fatal("a primary alone must never wait to commit")
	}
}

// TestLagBounds: rule 2, both modes.
func TestLagBounds(t *testing.T) {
	strict := NewPrimary(Strict, 10)
	bounded := NewPrimary(Bounded, 2)
	for e := uint64(1); e <= 3; e++ {
		strict.EndEpoch(EpochEnd{Epoch: e})
		bounded.EndEpoch(EpochEnd{Epoch: e})
	}
	if !strict.MayStart(1) || strict.MayStart(2) {
		t.Error("strict: epoch 2 may start before epoch 1 is acknowledged")
	}
	if !bounded.MayStart(3) || bounded.MayStart(4) {
		t.Error("bounded(2): wrong lag limit")
	}
	strict.Ack(Ack{Epoch: 1})
	bounded.Ack(Ack{Epoch: 3})
	if !strict.MayStart(2) || strict.MayStart(3) {
		t.Error("strict: acknowledgement did not advance the limit")
	}
	if bounded.MayStart(4) {
		t.Error("bounded: epochs received but not executed advanced the limit")
	}
	bounded.Ack(Ack{Epoch: 3, Executed: 1})
	if !bounded.MayStart(4) || bounded.MayStart(5) {
		t.Error("bounded: execution did not advance the limit by exactly one")
	}
	if _, err := bounded.Ack(Ack{Epoch: 3, Executed: 4}); err == nil {
		t.Error("ack of an epoch executed but never held accepted")
	}
	bounded.Output(out(1, 5, 0)) // needs the end of epoch 4: held
	act := bounded.BackupLost()
	if len(act.Release) != 1 || !bounded.MayStart(100) {
		t.Errorf("alone: released %v, may start %v", act.Release, bounded.MayStart(100))
	}
	if act := bounded.Answer(Answer{Seq: 1}); len(act.Send) != 0 {
		t.Error("a primary alone still sends")
	}
}

// TestBackupOrderAndFailover: rules 4 and 5.
func TestBackupOrderAndFailover(t *testing.T) {
	b := NewBackup()
	if b.MayExecute(1, false) {
		t.Fatal("may execute epoch 1 before holding its end")
	}
	for _, m := range []Message{
		{Type: TypeAnswer, Answer: &Answer{Seq: 1}},
		{Type: TypeEpochEnd, EpochEnd: &EpochEnd{Epoch: 1, Answers: 1}},
		{Type: TypeAnswer, Answer: &Answer{Seq: 2}},
	} {
		if rec, err := b.Receive(m); err != nil || rec == nil {
			t.Fatalf("%v: %v", m.Type, err)
		}
	}
	if ack, ok := b.Ack(); !ok || *ack.Ack != (Ack{Epoch: 1, Answers: 2}) {
		t.Fatalf("ack %+v", ack.Ack)
	}
	if _, ok := b.Ack(); ok {
		t.Error("repeated ack of the same records")
	}
	b.Executed(1)
	if ack, ok := b.Ack(); !ok || ack.Ack.Executed != 1 {
		t.Errorf("execution not acknowledged: %+v", ack.Ack)
	}
	if !b.MayExecute(1, false) || b.MayExecute(2, false) {
		t.Error("one epoch behind violated")
	}
	if _, err := b.Receive(Message{Type: TypeAnswer, Answer: &Answer{Seq: 5}}); err == nil {
		t.Error("gap in answers accepted")
	}
	if _, err := b.Receive(Message{Type: TypeEpochEnd, EpochEnd: &EpochEnd{Epoch: 2, Answers: 1}}); err == nil {
		t.Error("epoch end with the wrong answer count accepted")
	}
	for seq := uint64(1); seq <= 4; seq++ {
		if act := b.Output(out(seq, 1, 1)); len(act.Release) != 0 {
			t.Fatal("a backup released output")
		}
	}
	b.Receive(Message{Type: TypeRelease, Release: &Release{Output: 2}})
	act := b.FailOver()
	if len(act.Release) != 2 || act.Release[0].Seq != 3 || act.Release[1].Seq != 4 {
		t.Fatalf("failover re-emitted %+v, want outputs 3 and 4", act.Release)
	}
	if !b.MayExecute(99, false) {
		t.Error("after failover the backup still waits for epoch ends")
	}
	if act := b.Output(out(5, 2, 2)); len(act.Release) != 1 {
		t.Error("new primary does not release")
	}
}

// TestQuietEpochRunsBesideThePrimary: rule 4a. A quiet epoch may run before
// its end is held, but only the one right after the last end held, and
// only once the epochs before it have been executed.
func TestQuietEpochRunsBesideThePrimary(t *testing.T) {
	b := NewBackup()
	if !b.MayExecute(1, true) {
		t.Fatal("a quiet first epoch must not wait for its end")
	}
	if b.MayExecute(2, true) {
		t.Fatal("quiet epoch 2 may run while epoch 1's end is not held")
	}
	if _, err := b.Receive(Message{Type: TypeEpochEnd, EpochEnd: &EpochEnd{Epoch: 1}}); err != nil {
		t.Fatal(err)
	}
	if b.MayExecute(2, true) {
		t.Error("quiet epoch 2 may run before epoch 1 was executed")
	}
	b.Executed(1)
	if !b.MayExecute(2, true) {
		t.Error("quiet epoch 2 waits for its end")
	}
	if b.MayExecute(2, false) || b.MayExecute(3, true) {
		t.Error("a counted epoch, or one two ahead, may run before its end is held")
	}
}

// TestHostAnswerDataRoundTrips: an answer of kind host carries its bytes
// through the codec; one of another kind carries none on the wire.
func TestHostAnswerDataRoundTrips(t *testing.T) {
	data := bytes.Repeat([]byte{0xAB}, 256<<10)
	buf, err := AppendFrame(nil, Message{Type: TypeAnswer, Answer: &Answer{Seq: 9, Kind: KindHost, Port: 2, Value: uint64(len(data)), Data: data}})
	if err != nil {
		t.Fatalf("a 256 KiB host answer does not fit a frame: %v", err)
	}
	m, err := ReadFrame(bytes.NewReader(buf))
	if err != nil {
		t.Fatal(err)
	}
	if a := m.Answer; a.Kind != KindHost || a.Seq != 9 || !bytes.Equal(a.Data, data) {
		t.Fatalf("decoded kind %d seq %d with %d bytes", a.Kind, a.Seq, len(a.Data))
	}
	in, _ := AppendFrame(nil, Message{Type: TypeAnswer, Answer: &Answer{Seq: 1, Kind: 1, Data: []byte("dropped")}})
	if m, err := ReadFrame(bytes.NewReader(in)); err != nil || m.Answer.Data != nil {
		t.Fatalf("an IN answer decoded with data %q (%v)", m.Answer.Data, err)
	}
}

// TestArbitrationClaimsTheNextGenerationOnce: rule 7. A replica claims
// the generation after the one it holds, one claim at a time; a win moves
// it on, a loss stops it for good.
func TestArbitrationClaimsTheNextGenerationOnce(t *testing.T) {
	var a Arbitration
	if _, ok := a.Claim(); ok {
		t.Fatal("a replica that holds no generation may not claim")
	}
	a.Start(3)
	g, ok := a.Claim()
	if !ok || g != 4 {
		t.Fatalf("claim %d %v, want generation 4", g, ok)
	}
	if _, ok := a.Claim(); ok {
		t.Fatal("a second claim while one is under way")
	}
	if a.MayActAlone() {
		t.Fatal("acting alone before the claim is won")
	}
	if err := a.Won(5); err == nil {
		t.Fatal("won a generation never claimed")
	}
	if err := a.Won(4); err != nil || !a.MayActAlone() || a.Held() != 4 {
		t.Fatalf("after winning 4: %v, held %d", err, a.Held())
	}
	if g, ok := a.Claim(); !ok || g != 5 {
		t.Fatalf("next claim %d %v, want 5", g, ok)
	}
	a.Lost(errors.New("generation 5 is another replica's"))
	if a.MayActAlone() || a.Stopped() == nil {
		t.Fatal("a replica that lost may still act")
	}
	if _, ok := a.Claim(); ok {
		t.Fatal("a replica that lost claimed again")
	}
}

// TestClaimAnswered: only a won claim and a definite refusal answer a
// claim; a timeout or a broken connection leaves it to SettleClaim.
func TestClaimAnswered(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{nil, true},
		{&LostClaim{Claimed: 2, Register: Register{Gen: 2, Holder: "b"}}, true},
		{fmt.Errorf("claiming generation 2 at x: %w", ErrClaimLost), true},
		{context.DeadlineExceeded, false},
		{fmt.Errorf("claiming generation 2 at x: %w", io.ErrUnexpectedEOF), false},
	} {
		if got := ClaimAnswered(c.err); got != c.want {
			t.Errorf("ClaimAnswered(%v) = %v, want %v", c.err, got, c.want)
		}
	}
	if err := SettleClaim(2, "a", context.DeadlineExceeded, Register{Gen: 2, Holder: "b"}, nil); !errors.Is(err, ErrClaimLost) {
		t.Errorf("settled against another holder: %v, want ErrClaimLost", err)
	}
}
