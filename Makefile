# hvft: the two commands the README starts with, and the rest.
#
#   make run     build hvft and run the replicated demo (see README.md)
#   make test    every test: formatting, vet, unit, process and golden tests,
#                the protocol and replication packages again under -race,
#                a short fuzz run
#   make bench   the go benchmarks, then hvft bench (plots into docs/)
#   make chaos   the long chaos run (500 trials; CHAOS_TRIALS=N for another count),
#                then 50 SIGKILLs each of a replicated SQLite program and of one
#                that claims file names (LINUX_TRIALS=N)
#   make soak    exception- and interrupt-heavy guests on the smallest TLB
#                for 10 minutes (SOAK=30m for longer)
#   make guests  rebuild the guest images in guests/images

GO      ?= go
HVFT    := ./hvft
# A count of inputs, not a duration: a run against the clock ended inside a
# slow input on a loaded machine and was reported as "context deadline
# exceeded".
FUZZTIME ?= 100000x
# Each test package's bound: cmd/hvft takes about 4.5 minutes alone and
# over 8 beside a second make test, past go test's default of 10.
TEST_TIMEOUT ?= 30m
LINUX_TRIALS ?= 50

.PHONY: all deps build run test fuzz bench chaos soak guests clean

all: build

deps:
	@.ci/deps

build: deps
	$(GO) build -o $(HVFT) ./cmd/hvft

run: build
	$(HVFT) demo

test: deps
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt would change: $$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) ./epoch ./replica ./vm/linux
	$(MAKE) --no-print-directory fuzz

fuzz: deps
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./vm/guestelf
	$(GO) test -run '^$$' -fuzz '^FuzzReadFrame$$' -fuzztime $(FUZZTIME) ./epoch
	$(GO) test -run '^$$' -fuzz '^FuzzReadLog$$' -fuzztime $(FUZZTIME) ./replica
	$(GO) test -run '^$$' -fuzz '^FuzzHandshake$$' -fuzztime $(FUZZTIME) ./replica

bench: build
	$(GO) test -run '^$$' -bench . -benchtime 3x ./vm/... ./replica/...
	$(HVFT) bench --out docs

# The long chaos run: 500 trials of faults against replicated pairs.
CHAOS_TRIALS ?= 500
chaos: deps
	@log=$$(mktemp); HVFT_CHAOS_TRIALS=$(CHAOS_TRIALS) $(GO) test -count=1 -timeout 120m -run '^TestChaos$$' -v ./cmd/hvft > $$log 2>&1; status=$$?; \
	grep -E '^(=== RUN|\s*--- FAIL|ok|FAIL)|chaos:|_test\.go:' $$log; \
	[ $$status -eq 0 ] || { echo '--- a trial failed: the whole log, with the output of the replicas:'; cat $$log; }; rm -f $$log; [ $$status -eq 0 ] || exit $$status; \
	log=$$(mktemp); HVFT_LINUX_TRIALS=$(LINUX_TRIALS) $(GO) test -count=1 -timeout 60m -run '^(TestSQLiteSurvivesPrimaryKills|TestFileClaimsSurvivePrimaryKills)$$' -v ./cmd/hvft > $$log 2>&1; status=$$?; \
	grep -E '^(=== RUN|\s*--- |ok|FAIL)|_test\.go:' $$log; \
	[ $$status -eq 0 ] || { echo '--- a trial failed: the whole log:'; cat $$log; }; rm -f $$log; exit $$status

SOAK ?= 10m
soak: deps
	@log=$$(mktemp); HVFT_SOAK=$(SOAK) $(GO) test -count=1 -timeout 0 -run '^TestSoak$$' -v ./vm > $$log 2>&1; status=$$?; \
	grep -E '^(=== RUN|\s*--- |ok|FAIL)|soak|runs|_test\.go:' $$log; rm -f $$log; exit $$status

guests:
	$(MAKE) -C guests

clean:
	rm -f $(HVFT)
