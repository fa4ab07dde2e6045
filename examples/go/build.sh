#!/usr/bin/env bash
# Build the Go example offline: stubs from protos/ with `buf generate` (buf.gen.yaml), then
# `go build` in GOPATH mode against the Go packages Debian ships in /usr/share/gocode
# (golang-google-grpc-dev, golang-google-genproto-dev, golang-google-protobuf-dev), because
# the Go module proxy may not be reachable. Writes examples/go/bin/quorum-example; exits 0
# with a message when a tool is missing (the example's test then skips).
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(cd ../.. && pwd)
BUF="$ROOT/.tools/node_modules/.bin/buf"
GOCODE=/usr/share/gocode

missing=()
command -v go >/dev/null 2>&1 || missing+=("go (Debian: golang-go)")
command -v protoc-gen-go >/dev/null 2>&1 || missing+=("protoc-gen-go (Debian: protoc-gen-go)")
command -v protoc-gen-go-grpc >/dev/null 2>&1 || missing+=("protoc-gen-go-grpc (Debian: protoc-gen-go-grpc)")
[[ -d $GOCODE/src/google.golang.org/grpc ]] || missing+=("$GOCODE/src/google.golang.org/grpc (Debian: golang-google-grpc-dev)")
[[ -d $GOCODE/src/google.golang.org/genproto/googleapis/rpc ]] || missing+=("$GOCODE/src/google.golang.org/genproto (Debian: golang-google-genproto-dev)")
[[ -x $BUF ]] || missing+=("buf ($BUF: make setup installs it with npm)")
[[ -f $ROOT/.tools/googleapis/google/rpc/status.proto ]] || missing+=("google/rpc protos for buf (make setup copies them)")
if ((${#missing[@]})); then
    echo "Go example not built; missing:"
    printf '  %s\n' "${missing[@]}"
    exit 0
fi

rm -rf gopath/src/quorum bin
(cd "$ROOT" && "$BUF" generate)   # -> examples/go/gopath/src/quorum/gen/go/...
GO111MODULE=off GOFLAGS= GOPATH="$PWD/gopath:$GOCODE" go build -o bin/quorum-example .
echo "built examples/go/bin/quorum-example"
