# nsplug build and test entry points. Everything runs as root on Linux.
GO       ?= go
BINDIR   ?= bin
BIN      := $(BINDIR)/nsplug
GOFLAGS  ?=
BENCH    ?= full
EXAMPLES := netinfo

.PHONY: all build demo serve test test-short vet fmt proto bench examples test-examples clean

all: build

# Three binaries, installed side by side from one build: nsplug, the
# front (calls, ids, plugins, the demo), nsplugd, the full one it hands
# serve, health and third-party plugins to, and nsplug-handler, the
# built-ins alone, which every built-in process runs. The front and the
# handler link no gRPC, go-plugin or prometheus, so that a process of
# either starts in a few milliseconds. The handler is linked statically
# (netgo, osusergo: its only cgo is the nsexec preamble); the front is
# built without cgo at all: the C runtime's start cost a front process
# 0.9 ms, and the front never serves in a target (nsexec/nocgo.go). The
# tests and the bench build them with this target too (BINDIR=...).
FRONT_FLAGS   := -tags netgo,osusergo
HANDLER_FLAGS := $(FRONT_FLAGS) -ldflags=-extldflags=-static
# The handler's C runtime is musl when musl-gcc is installed (Debian:
# musl-tools), else glibc. glibc's start probes the CPU with dozens of
# cpuid instructions, and in a VM each one exits to the hypervisor (14 µs
# apiece on the developers' machines): a static glibc `int main(){}` takes
# 1.4 ms from exec to exit there, a musl one 0.55 ms, and every handler
# start pays the difference. musl has no kernel headers of its own; the
# system's (linux/, asm/) are searched after musl's.
HANDLER_CC ?= $(shell command -v musl-gcc 2>/dev/null)
ifneq ($(HANDLER_CC),)
HANDLER_ENV := CC=$(HANDLER_CC) CGO_CFLAGS="-O2 -idirafter /usr/include -idirafter /usr/include/$(shell $(HANDLER_CC) -dumpmachine)"
endif
build:
	$(GO) build $(GOFLAGS) -o $(BINDIR)/nsplugd ./cmd/nsplugd
	CGO_ENABLED=0 $(GO) build $(GOFLAGS) $(FRONT_FLAGS) -o $(BIN) ./cmd/nsplug
	@test -n "$(HANDLER_CC)" || echo "note: no musl-gcc (Debian: musl-tools): nsplug-handler is linked with glibc, whose start costs about 1 ms more per handler process"
	$(HANDLER_ENV) $(GO) build $(GOFLAGS) $(HANDLER_FLAGS) -o $(BINDIR)/nsplug-handler ./cmd/nsplug-handler

# A tour against a sandbox target made on the spot: nothing to set up.
demo: build
	./$(BIN) demo

# The node daemon, with the embedded default configuration (or
# `make serve ARGS="--config FILE"`): see README.md, "The node daemon".
serve: build
	./$(BIN) serve $(ARGS)

# Unit and integration tests, with the race detector, against real targets
# in fresh namespaces (needs root).
test: vet
	$(GO) test -race -count=1 -timeout 20m ./...
	$(MAKE) test-examples

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$'))" || { gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$'); echo "gofmt: the files above need formatting"; exit 1; }
	$(GO) vet ./...

fmt:
	gofmt -w $$(git ls-files '*.go' | grep -v '\.pb\.go$$')

# Example third-party plugins, each its own module under examples/ with a
# replace of this tree and a committed go.sum, so that they build offline
# from the module cache: bin/examples/NAME.
examples:
	@mkdir -p bin/examples
	@for e in $(EXAMPLES); do \
		echo "go build examples/$$e -> bin/examples/$$e"; \
		(cd examples/$$e && $(GO) build $(GOFLAGS) -o ../../bin/examples/$$e .) || exit 1; \
	done

# The examples' own tests: sdktest in-process, and through the core
# against sandbox targets (root).
test-examples:
	@for e in $(EXAMPLES); do \
		(cd examples/$$e && $(GO) vet ./... && $(GO) test -race -count=1 ./...) || exit 1; \
	done

# Regenerate the Go code of the wire contract (wire/) and of the node API
# (api/v1). Needs protoc (Debian:
# protobuf-compiler) and protoc-gen-go-grpc $(GRPC_GEN) on PATH (go install
# google.golang.org/grpc/cmd/protoc-gen-go-grpc@v$(GRPC_GEN); Debian's is
# older and would rewrite control_grpc.pb.go in an older style).
# protoc-gen-go is built from the google.golang.org/protobuf that go.mod
# pins, so that the generated code matches the runtime it links.
GRPC_GEN := 1.5.1
proto:
	@protoc-gen-go-grpc --version | grep -qx 'protoc-gen-go-grpc $(GRPC_GEN)' || \
		{ echo "make proto: want protoc-gen-go-grpc $(GRPC_GEN) on PATH, have: $$(protoc-gen-go-grpc --version)"; exit 1; }
	$(GO) build -o bin/protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go
	protoc -I wire --plugin=protoc-gen-go=bin/protoc-gen-go \
		--go_out=paths=source_relative:wire \
		--go-grpc_out=paths=source_relative:wire \
		wire/plugin.proto wire/control/control.proto
	protoc -I api --plugin=protoc-gen-go=bin/protoc-gen-go \
		--go_out=paths=source_relative:api \
		--go-grpc_out=paths=source_relative:api \
		api/v1/nsplug.proto api/v1/service/service.proto

# Benchmarks (root): nsplug against nsenter(1), oneshot, cold and warm
# instances, a bare go-plugin plugin and the host floor, in one process and
# one run; prints the table with the target ratios and writes
# bench/results.json. `make bench BENCH=quick` finishes within two minutes.
# See bench/README.md.
bench: build
	$(GO) build $(GOFLAGS) -o bin/nsplug-bench ./bench/cmd/nsplug-bench
	$(GO) build $(GOFLAGS) -o bin/bareplugin ./bench/bareplugin
	./bin/nsplug-bench -mode $(BENCH) -bare bin/bareplugin -nsplug $(BIN) -out bench/results.json

clean:
	rm -rf bin
