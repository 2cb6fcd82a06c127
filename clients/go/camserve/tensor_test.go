package camserve

import (
	"fmt"
	"math"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/camserve/camserve/clients/go/camservev1"
)

func TestFloat32BytesAreLittleEndianCOrder(t *testing.T) {
	// 1.0 = 0x3f800000, -2.5 = 0xc0200000: least significant byte first.
	raw := []byte{0, 0, 0x80, 0x3f, 0, 0, 0x20, 0xc0}
	array, err := DecodeTensor(&pb.Tensor{Data: raw, Shape: []int64{1, 2}})
	if err != nil {
		t.Fatal(err)
	}
	if array.Data[0] != 1 || array.Data[1] != -2.5 || array.At(0, 1) != -2.5 {
		t.Fatalf("decoded %v", array.Data)
	}
	if got := EncodeFloat32([]float32{1, -2.5}, []int64{1, 2}).Data; string(got) != string(raw) {
		t.Fatalf("encoded %x, want %x", got, raw)
	}
}

func TestFloat16AndUint8Widen(t *testing.T) {
	// 0x3c00 = 1, 0xc000 = -2, 0x0001 = 2^-24 (smallest subnormal), 0x7bff = 65504, 0xfc00 = -inf.
	raw := []byte{0x00, 0x3c, 0x00, 0xc0, 0x01, 0x00, 0xff, 0x7b, 0x00, 0xfc}
	array, err := DecodeTensor(&pb.Tensor{Data: raw, Shape: []int64{5}, Dtype: pb.DataType_DATA_TYPE_FLOAT16})
	if err != nil {
		t.Fatal(err)
	}
	want := []float32{1, -2, float32(math.Ldexp(1, -24)), 65504, float32(math.Inf(-1))}
	for i := range want {
		if array.Data[i] != want[i] {
			t.Fatalf("element %d: %v, want %v", i, array.Data[i], want[i])
		}
	}
	bytes, err := DecodeTensor(&pb.Tensor{Data: []byte{0, 128, 255}, Shape: []int64{3}, Dtype: pb.DataType_DATA_TYPE_UINT8})
	if err != nil || bytes.Data[1] != 128 || bytes.Data[2] != 255 {
		t.Fatalf("uint8: %v %v", bytes, err)
	}
}

func TestATensorThatDoesNotFitItsShapeIsAnError(t *testing.T) {
	_, err := DecodeTensor(&pb.Tensor{Data: make([]byte, 12), Shape: []int64{2, 2}})
	if err == nil || !strings.Contains(err.Error(), "holds 12 bytes, expected 16") {
		t.Fatalf("error %v", err)
	}
	_, err = DecodeTensor(&pb.Tensor{Data: nil, Shape: []int64{-1}})
	if err == nil || !strings.Contains(err.Error(), ">= 0") {
		t.Fatalf("error %v", err)
	}
	_, err = DecodeTensor(&pb.Tensor{Dtype: 9})
	if err == nil || !strings.Contains(err.Error(), "unknown tensor data type 9") {
		t.Fatalf("error %v", err)
	}
}

func TestStatusTextNamesTheCodeLikeTheOtherClients(t *testing.T) {
	for code, name := range map[codes.Code]string{
		codes.OK: "OK", codes.NotFound: "NOT_FOUND", codes.InvalidArgument: "INVALID_ARGUMENT",
		codes.Unauthenticated: "UNAUTHENTICATED", codes.DeadlineExceeded: "DEADLINE_EXCEEDED",
	} {
		if got := CodeName(code); got != name {
			t.Errorf("CodeName(%v) = %s, want %s", code, got, name)
		}
	}
	err := ResponseError(&pb.ExplainResponse{Error: &pb.Error{Code: 5, Message: "model 'x' is not served here"}})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("code %v", status.Code(err))
	}
	wrapped := StatusText(fmt.Errorf("a.png: %w", err))
	if wrapped != "a.png: NOT_FOUND: model 'x' is not served here" {
		t.Fatalf("StatusText %q", wrapped)
	}
	if ResponseError(&pb.ExplainResponse{}) != nil {
		t.Fatal("a response without error is not an error")
	}
}
