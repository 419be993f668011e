package epoch

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

var updateScripts = flag.Bool("update", false, "rewrite the expected results of testdata/*.txt from what the rules do")

// TestScripts steps the protocol's rules through the scenarios in
// testdata/*.txt, with no socket, goroutine or clock: failover, going on
// alone, arbitration, fencing, the end of a run and the failure detector.
// Each command line is followed by one "=> " line, what the step returned;
// `go test ./epoch -run TestScripts -update` rewrites them (review the
// diff). The commands are listed in script's doc comment.
func TestScripts(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.txt"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no scripts in testdata (%v)", err)
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) { runScript(t, file) })
	}
}

func runScript(t *testing.T, file string) {
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	var out []string
	s := &script{}
	steps := 0
	for i := 0; i < len(lines); i++ {
		line := lines[i]
		out = append(out, line)
		if trimmed := strings.TrimSpace(line); trimmed == "" || strings.HasPrefix(trimmed, "#") {
			continue
		}
		if strings.HasPrefix(line, "=> ") {
			t.Fatalf("%s:%d: a result with no command before it", file, i+1)
		}
		got := s.step(line)
		steps++
		out = append(out, "=> "+got)
		if i+1 < len(lines) && strings.HasPrefix(lines[i+1], "=> ") {
			i++
			if want := strings.TrimPrefix(lines[i], "=> "); want != got && !*updateScripts {
				t.Errorf("%s:%d: %s\n\tgot  %s\n\twant %s", file, i, line, got, want)
			}
		} else if !*updateScripts {
			t.Errorf("%s:%d: %s: no expected result (got %s)", file, i+1, line, got)
		}
	}
	if steps == 0 {
		t.Fatalf("%s has no steps", file)
	}
	if *updateScripts {
		if err := os.WriteFile(file, []byte(strings.Join(out, "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// script is one scenario's replicas. Commands (key=value arguments):
//
//	primary [strict] [lag=N] [gen=G]   a new primary (gen: under an arbiter)
//	backup [gen=G] [joined=E/A]        a new backup
//	liveness timeout=N                 a new failure detector
//	answer N                           primary: logs answer N
//	end E answers=A                    primary: logs epoch E's end
//	output seq=S epoch=E answers=A     primary or backup: a console output
//	ack epoch=E answers=A executed=X   primary: the backup's acknowledgement
//	recv answer N | end E answers=A | release W | goodbye exit=C [stopped=WHY]
//	                                   [more=true: more frames wait, no ack yet]
//	suspect WHY...                     the peer is presumed lost
//	claimed G [lost=WHY] [settled]     the arbiter's answer (settled: the
//	                                   last settle's result)
//	settle G self=H [reg=G/HOLDER] [claimerr=WHY] [readerr=WHY]
//	                                   a claim whose answer was lost, and
//	                                   the register read back (SettleClaim)
//	stop WHY...                        primary: fenced, or its sink failed
//	maystart E                         primary: may epoch E begin (rule 2)
//	mayfinish | finish exit=C hash=H   primary: the end of the run
//	verdict exit=C hash=H              primary: the backup's goodbye
//	join epoch=E answers=A             primary: a backup joined at E's end
//	admit [awaiting=true] [taken=true] [busy=true] [join=true] [mismatch=WHY]
//	                                   rule 8: a hello's answer
//	endrun                             the replica's run is over
//	tick [heard]                       the failure detector: an interval ends
//	state                              the role's observable state
type script struct {
	p       *Primary
	b       *Backup
	live    *Liveness
	settled error // the last settle's result, for "claimed G settled"
}

func (s *script) step(line string) string {
	f := strings.Fields(line)
	cmd, args := f[0], f[1:]
	kv := map[string]string{}
	var words []string
	for _, a := range args {
		if k, v, ok := strings.Cut(a, "="); ok {
			kv[k] = v
		} else {
			words = append(words, a)
		}
	}
	num := func(k string) uint64 {
		n, _ := strconv.ParseUint(kv[k], 10, 64)
		return n
	}
	arg := func(i int) uint64 {
		if i >= len(words) {
			return 0
		}
		n, _ := strconv.ParseUint(words[i], 10, 64)
		return n
	}
	rest := strings.Join(args, " ")
	switch cmd {
	case "primary":
		mode := Bounded
		if len(words) > 0 && words[0] == "strict" {
			mode = Strict
		}
		s.p, s.b = NewPrimary(mode, num("lag")), nil
		if g := num("gen"); g != 0 {
			s.p.Arbitrate(g)
		}
		return "ok"
	case "backup":
		s.p, s.b = nil, NewBackup()
		if j := kv["joined"]; j != "" {
			e, a, _ := strings.Cut(j, "/")
			en, _ := strconv.ParseUint(e, 10, 64)
			an, _ := strconv.ParseUint(a, 10, 64)
			s.b = NewJoinedBackup(en, an)
		}
		if g := num("gen"); g != 0 {
			s.b.Arbitrate(g)
		}
		return "ok"
	case "liveness":
		l := NewLiveness(num("timeout"))
		s.live = &l
		return "ok"
	case "tick":
		heard := len(words) > 0 && words[0] == "heard"
		return fmt.Sprintf("dead=%v silent=%d", s.live.Tick(heard), s.live.Silent())
	case "answer":
		return render(s.p.Answer(Answer{Seq: arg(0)}))
	case "end":
		return render(s.p.EndEpoch(EpochEnd{Epoch: arg(0), Answers: num("answers")}))
	case "output":
		o := Output{Kind: Console, Seq: num("seq"), Epoch: num("epoch"), Answers: num("answers")}
		if s.b != nil {
			return render(s.b.Output(o))
		}
		return render(s.p.Output(o))
	case "ack":
		act, err := s.p.Ack(Ack{Epoch: num("epoch"), Answers: num("answers"), Executed: num("executed")})
		if err != nil {
			return "error: " + err.Error()
		}
		return render(act)
	case "recv":
		return s.recv(words, kv)
	case "suspect":
		if s.b != nil {
			return render(s.b.Suspect(rest))
		}
		return render(s.p.Suspect(rest))
	case "claimed":
		var err error
		if why := kv["lost"]; why != "" {
			err = errors.New(why)
		}
		if len(words) > 1 && words[1] == "settled" {
			err = s.settled
		}
		if s.b != nil {
			return render(s.b.Claimed(arg(0), err))
		}
		return render(s.p.Claimed(arg(0), err))
	case "settle":
		var claimErr, readErr error
		if why := kv["claimerr"]; why != "" {
			claimErr = errors.New(strings.ReplaceAll(why, "-", " "))
		}
		if why := kv["readerr"]; why != "" {
			readErr = errors.New(strings.ReplaceAll(why, "-", " "))
		}
		var reg Register
		if r := kv["reg"]; r != "" {
			g, h, _ := strings.Cut(r, "/")
			reg.Gen, _ = strconv.ParseUint(g, 10, 64)
			reg.Holder = h
		}
		s.settled = SettleClaim(arg(0), kv["self"], claimErr, reg, readErr)
		switch {
		case s.settled == nil:
			return "won"
		case errors.Is(s.settled, ErrClaimLost):
			return "lost: " + s.settled.Error()
		case errors.Is(s.settled, ErrClaimUnknown):
			return "unknown: " + s.settled.Error()
		}
		return "error: " + s.settled.Error()
	case "stop":
		return render(s.p.Stop(errors.New(rest)))
	case "maystart":
		return strconv.FormatBool(s.p.MayStart(arg(0)))
	case "mayfinish":
		return strconv.FormatBool(s.p.MayFinish())
	case "finish":
		return render(s.p.Finish(Goodbye{ExitCode: uint32(num("exit")), Hash: hashOf(kv["hash"])}))
	case "verdict":
		s.p.BackupFinished(Goodbye{ExitCode: uint32(num("exit")), Hash: hashOf(kv["hash"])})
		g, divergence := s.p.Verdict()
		switch {
		case g == nil:
			return "no verdict"
		case divergence != "":
			return "diverged: " + divergence
		}
		return "matches"
	case "join":
		s.p.Join(num("epoch"), num("answers"))
		return "ok"
	case "admit":
		adm := Admission{AwaitingFirst: kv["awaiting"] == "true", FirstTaken: kv["taken"] == "true", Busy: kv["busy"] == "true"}
		refusal, first := adm.Admit(strings.ReplaceAll(kv["mismatch"], "-", " "), kv["join"] == "true")
		switch {
		case refusal != "":
			return "refused: " + refusal
		case first:
			return "first backup"
		}
		return "joins"
	case "endrun":
		if s.b != nil {
			s.b.End()
		} else {
			s.p.End()
		}
		return "ok"
	case "state":
		return s.state()
	}
	return "unknown command " + cmd
}

func (s *script) recv(words []string, kv map[string]string) string {
	if len(words) == 0 {
		return "recv what?"
	}
	n := func(k string) uint64 { v, _ := strconv.ParseUint(kv[k], 10, 64); return v }
	w := func(i int) uint64 {
		if i >= len(words) {
			return 0
		}
		v, _ := strconv.ParseUint(words[i], 10, 64)
		return v
	}
	var m Message
	switch words[0] {
	case "answer":
		m = Message{Type: TypeAnswer, Answer: &Answer{Seq: w(1)}}
	case "end":
		m = Message{Type: TypeEpochEnd, EpochEnd: &EpochEnd{Epoch: w(1), Answers: n("answers")}}
	case "release":
		m = Message{Type: TypeRelease, Release: &Release{Output: w(1)}}
	case "goodbye":
		m = Message{Type: TypeGoodbye, Goodbye: &Goodbye{ExitCode: uint32(n("exit")), Stopped: kv["stopped"]}}
	default:
		return "recv " + words[0] + "?"
	}
	if _, err := s.b.Receive(m); err != nil {
		return "error: " + err.Error()
	}
	if ack, ok := s.b.AckAfter(kv["more"] == "true"); ok {
		return "send " + describe(ack)
	}
	return "ok"
}

func (s *script) state() string {
	if s.b != nil {
		e, a := s.b.Held()
		done, code := s.b.PrimaryDone()
		return fmt.Sprintf("held=%d/%d watermark=%d primary=%v done=%v exit=%d gen=%d claiming=%v linkgone=%v stepdown=%v",
			e, a, s.b.Watermark(), s.b.IsPrimary(), done, code, s.b.Generation(), s.b.Claiming(), s.b.LinkGone(), s.b.SteppedDown())
	}
	return fmt.Sprintf("alone=%v held=%d released=%d gen=%d stopped=%v", s.p.Alone(), s.p.Held(), s.p.Released(), s.p.Generation(), s.p.Stopped())
}

func hashOf(s string) [16]byte {
	var h [16]byte
	copy(h[:], s)
	return h
}

// render prints a step's actions in a fixed order; "ok" when there are
// none.
func render(a Actions) string {
	var parts []string
	if len(a.Release) > 0 {
		seqs := make([]string, len(a.Release))
		for i, o := range a.Release {
			seqs[i] = strconv.FormatUint(o.Seq, 10)
		}
		parts = append(parts, "release "+strings.Join(seqs, ","))
	}
	for _, m := range a.Send {
		parts = append(parts, "send "+describe(m))
	}
	if a.Claim != 0 {
		parts = append(parts, fmt.Sprintf("claim %d", a.Claim))
	}
	if a.Alone != "" {
		parts = append(parts, "alone: "+a.Alone)
	}
	if a.TakeOver != "" {
		parts = append(parts, "takeover: "+a.TakeOver)
	}
	if a.Stop != nil {
		parts = append(parts, "stop: "+a.Stop.Error())
	}
	if len(parts) == 0 {
		return "ok"
	}
	return strings.Join(parts, " | ")
}

func describe(m Message) string {
	switch m.Type {
	case TypeAnswer:
		return fmt.Sprintf("answer(%d)", m.Answer.Seq)
	case TypeEpochEnd:
		return fmt.Sprintf("end(%d after %d)", m.EpochEnd.Epoch, m.EpochEnd.Answers)
	case TypeRelease:
		return fmt.Sprintf("release(%d)", m.Release.Output)
	case TypeAck:
		return fmt.Sprintf("ack(epoch=%d answers=%d executed=%d)", m.Ack.Epoch, m.Ack.Answers, m.Ack.Executed)
	case TypeGoodbye:
		return fmt.Sprintf("goodbye(exit=%d)", m.Goodbye.ExitCode)
	}
	return m.Type.String()
}
