package camserve

import (
	"encoding/binary"
	"fmt"
	"math"

	pb "github.com/camserve/camserve/clients/go/camservev1"
)

// Array is a decoded camserve.v1.Tensor: C-order values with their shape. Float16 and uint8 tensors are
// widened to float32 (uint8 maps keep their 0..255 values: round(255 * normalised value)).
type Array struct {
	Shape []int
	Data  []float32
	DType pb.DataType // as sent; DATA_TYPE_UNSPECIFIED is float32
}

// At returns the value at index (one per dimension).
func (a *Array) At(index ...int) float32 {
	offset := 0
	for d, i := range index {
		offset = offset*a.Shape[d] + i
	}
	return a.Data[offset]
}

// itemSize is the bytes per element of a dtype, 0 for unknown ones.
func itemSize(dtype pb.DataType) int {
	switch dtype {
	case pb.DataType_DATA_TYPE_UNSPECIFIED, pb.DataType_DATA_TYPE_FLOAT32:
		return 4
	case pb.DataType_DATA_TYPE_FLOAT16:
		return 2
	case pb.DataType_DATA_TYPE_UINT8:
		return 1
	}
	return 0
}

// DecodeTensor decodes raw little-endian bytes (the camserve.v1.Tensor convention) into an Array;
// an error names what does not fit (unknown dtype, negative dimension, byte count).
func DecodeTensor(tensor *pb.Tensor) (*Array, error) {
	size := itemSize(tensor.GetDtype())
	if size == 0 {
		return nil, fmt.Errorf("camserve: unknown tensor data type %d", tensor.GetDtype())
	}
	shape := make([]int, len(tensor.GetShape()))
	count := 1
	for i, d := range tensor.GetShape() {
		if d < 0 {
			return nil, fmt.Errorf("camserve: tensor dimensions must be >= 0, got %v", tensor.GetShape())
		}
		shape[i] = int(d)
		count *= int(d)
	}
	raw := tensor.GetData()
	if len(raw) != count*size {
		return nil, fmt.Errorf("camserve: tensor of shape %v holds %d bytes, expected %d", shape, len(raw), count*size)
	}
	data := make([]float32, count)
	for i := range data {
		switch size {
		case 4:
			data[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
		case 2:
			data[i] = float16(binary.LittleEndian.Uint16(raw[2*i:]))
		default:
			data[i] = float32(raw[i])
		}
	}
	return &Array{Shape: shape, Data: data, DType: tensor.GetDtype()}, nil
}

// float16 widens IEEE 754 half-precision bits to float32 (exactly: every half is a float32).
func float16(bits uint16) float32 {
	sign := float32(1)
	if bits&0x8000 != 0 {
		sign = -1
	}
	exponent := int(bits>>10) & 0x1f
	fraction := float32(bits & 0x3ff)
	switch exponent {
	case 0:
		return sign * float32(math.Ldexp(float64(fraction/1024), -14))
	case 0x1f:
		if fraction != 0 {
			return float32(math.NaN())
		}
		return sign * float32(math.Inf(1))
	}
	return sign * float32(math.Ldexp(float64(1+fraction/1024), exponent-15))
}

// EncodeFloat32 is the Tensor of float32 values (C order) with the given shape, little-endian.
func EncodeFloat32(values []float32, shape []int64) *pb.Tensor {
	raw := make([]byte, 4*len(values))
	for i, v := range values {
		binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(v))
	}
	return &pb.Tensor{Data: raw, Shape: shape, Dtype: pb.DataType_DATA_TYPE_FLOAT32}
}

// Map is one decoded map of an image: for target TargetIndex (class ClassID) by Method, shape [H, W].
type Map struct {
	Method      string
	TargetIndex int
	ClassID     int64
	Values      *Array
}

// Maps decodes an image's maps, in the response's order (target-major, then method).
func Maps(image *pb.ImageExplanation) ([]Map, error) {
	maps := make([]Map, 0, len(image.GetMaps()))
	for _, m := range image.GetMaps() {
		values, err := DecodeTensor(m.GetData())
		if err != nil {
			return nil, fmt.Errorf("map %s of target %d: %w", m.GetMethod(), m.GetTargetIndex(), err)
		}
		maps = append(maps, Map{m.GetMethod(), int(m.GetTargetIndex()), m.GetClassId(), values})
	}
	return maps, nil
}
