module hvft

go 1.26.8

require (
	github.com/zeebo/xxh3 v1.1.0
	go.uber.org/zap v1.28.0
)

require (
	github.com/klauspost/cpuid/v2 v2.2.10 // indirect
	go.uber.org/multierr v1.10.0 // indirect
	golang.org/x/sys v0.30.0 // indirect
)
