#!/usr/bin/env bash
# Regenerates the checked-in Go stubs (clients/go/camservev1/*.pb.go) from proto/camserve/v1/camserve.proto,
# offline: Debian's protoc, and protoc-gen-go / protoc-gen-go-grpc built from the Go sources that
# golang-google-protobuf-dev and golang-google-grpc-dev install under /usr/share/gocode (the same versions
# the client compiles against).
#
#   bash clients/go/gen.sh            # rewrite clients/go/camservev1/
#   bash clients/go/gen.sh OUT_DIR    # write OUT_DIR/camservev1/ instead (tests/clients/test_go_client.py
#                                     # compares it with the checked-in files)
# The plugins are built into $CAMSERVE_GO_BUILD/bin (default build/go/bin).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${1:-$ROOT/clients/go}
BIN=${CAMSERVE_GO_BUILD:-$ROOT/build/go}/bin
MODULE=github.com/camserve/camserve/clients/go
mkdir -p "$BIN" "$OUT"
export GO111MODULE=off GOPROXY=off GOPATH=/usr/share/gocode
go build -o "$BIN/protoc-gen-go" google.golang.org/protobuf/cmd/protoc-gen-go
go build -o "$BIN/protoc-gen-go-grpc" google.golang.org/grpc/cmd/protoc-gen-go-grpc
protoc -I "$ROOT/proto" \
  --plugin=protoc-gen-go="$BIN/protoc-gen-go" --go_out="$OUT" --go_opt=module=$MODULE \
  --plugin=protoc-gen-go-grpc="$BIN/protoc-gen-go-grpc" --go-grpc_out="$OUT" --go-grpc_opt=module=$MODULE \
  camserve/v1/camserve.proto
