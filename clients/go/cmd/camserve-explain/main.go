// Command camserve-explain explains images with a camserve server (camserve.v1) and writes each map as
// a PNG or PGM image, and optionally every value as JSON.
//
//	camserve-explain -server 127.0.0.1:50051 -out-dir maps digit.png
//	camserve-explain -server HOST:443 -tls -ca-file ca.pem -token-file token.txt \
//	    -method gradcam -method gradcam++ -target -1 -target 3 -json maps.json a.png b.png
//	camserve-explain -server 127.0.0.1:50051 -model seg \
//	    -target-spec '{"kind": "TARGET_KIND_REGION", "class_id": 3, "box": {"x1": 8, "y1": 8, "x2": 40, "y2": 40}}' a.png
//
// One image goes in one Explain call, several over one ExplainStream. Errors: one line on stderr with
// the gRPC status ("camserve-explain: error: NOT_FOUND: ...") and exit status 2.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"image"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/camserve/camserve/clients/go/camserve"
	pb "github.com/camserve/camserve/clients/go/camservev1"
)

type repeated []string

func (r *repeated) String() string     { return strings.Join(*r, ",") }
func (r *repeated) Set(v string) error { *r = append(*r, v); return nil }

type args struct {
	server, model, dtype, outDir, format, jsonOut, tokenFile, tensor, shape string
	methods, targets, specs                                                 repeated
	timeout                                                                 float64
	listModels, info                                                        bool
	opts                                                                    camserve.Options
	images                                                                  []string
}

// usageError is a mistake in the command line (reported with the usage line).
type usageError struct{ message string }

func (e usageError) Error() string { return e.message }

func parseArgs(argv []string) (*args, error) {
	a := &args{}
	flags := flag.NewFlagSet("camserve-explain", flag.ContinueOnError)
	flags.SetOutput(os.Stderr)
	flags.StringVar(&a.server, "server", "", "server address HOST:PORT (required)")
	flags.StringVar(&a.model, "model", "", "model name (default: the server's only model)")
	flags.Var(&a.methods, "method", "CAM method, repeatable (default: gradcam)")
	flags.Var(&a.targets, "target", "class id >= 0 or -k for the k-th best class, repeatable (default: -1)")
	flags.Var(&a.specs, "target-spec", "a camserve.v1.Target as JSON (protobuf JSON mapping), repeatable, instead of -target")
	flags.StringVar(&a.dtype, "dtype", "float32", "map data type sent back: float32 or uint8")
	flags.StringVar(&a.outDir, "out-dir", "", "write each map as OUT_DIR/<image stem>_<method>_t<target index>.<format>")
	flags.StringVar(&a.format, "format", "png", "image format of -out-dir: png or pgm")
	flags.StringVar(&a.jsonOut, "json", "", "write predictions, targets and map values as JSON to this file")
	flags.StringVar(&a.tensor, "tensor", "", "send this raw little-endian float32 file (preprocessed, C order) instead of images")
	flags.StringVar(&a.shape, "shape", "", "shape of -tensor, e.g. 3,64,64")
	flags.BoolVar(&a.listModels, "list-models", false, "print the server's models as JSON and exit")
	flags.BoolVar(&a.info, "info", false, "print the model's description (GetModel) as JSON and exit")
	flags.Float64Var(&a.timeout, "timeout", 60, "deadline of the whole run, in seconds")
	flags.BoolVar(&a.opts.TLS, "tls", false, "speak TLS (implied by the certificate flags)")
	flags.StringVar(&a.opts.CAFile, "ca-file", "", "PEM CA that verifies the server")
	flags.StringVar(&a.opts.CertFile, "client-cert", "", "PEM client certificate (mTLS)")
	flags.StringVar(&a.opts.KeyFile, "client-key", "", "PEM key of -client-cert")
	flags.StringVar(&a.opts.ServerName, "server-name", "", "name the server certificate is checked against")
	flags.StringVar(&a.tokenFile, "token-file", "", "file holding the bearer token")
	if err := flags.Parse(argv); err != nil {
		return nil, usageError{err.Error()}
	}
	a.images = flags.Args()
	switch {
	case a.server == "":
		return nil, usageError{"-server is required"}
	case a.format != "png" && a.format != "pgm":
		return nil, usageError{fmt.Sprintf("-format %s: expected png or pgm", a.format)}
	case a.dtype != "float32" && a.dtype != "uint8":
		return nil, usageError{fmt.Sprintf("-dtype %s: expected float32 or uint8", a.dtype)}
	case (a.tensor == "") != (a.shape == ""):
		return nil, usageError{"-tensor and -shape go together"}
	case a.tensor != "" && len(a.images) > 0:
		return nil, usageError{"give image files or -tensor, not both"}
	case !a.listModels && !a.info && a.tensor == "" && len(a.images) == 0:
		return nil, usageError{"no image given"}
	case len(a.targets) > 0 && len(a.specs) > 0:
		return nil, usageError{"give -target or -target-spec, not both"}
	case !(a.timeout > 0):
		return nil, usageError{fmt.Sprintf("-timeout %v: expected a positive number of seconds", a.timeout)}
	}
	if len(a.methods) == 0 {
		a.methods = repeated{"gradcam"}
	}
	if a.tokenFile != "" {
		token, err := os.ReadFile(a.tokenFile)
		if err != nil {
			return nil, usageError{fmt.Sprintf("-token-file: %v", err)}
		}
		a.opts.Token = strings.TrimSpace(string(token))
	}
	return a, nil
}

func parseInts(values []string, flagName string) ([]int64, error) {
	out := make([]int64, len(values))
	for i, v := range values {
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil {
			return nil, usageError{fmt.Sprintf("-%s %s: expected an integer", flagName, v)}
		}
		out[i] = n
	}
	return out, nil
}

// input is one request's image and the name its outputs are written under.
type input struct {
	name  string
	image *pb.Image
}

func parseSpecs(values []string) ([]*pb.Target, error) {
	out := make([]*pb.Target, len(values))
	for i, v := range values {
		out[i] = &pb.Target{}
		if err := protojson.Unmarshal([]byte(v), out[i]); err != nil {
			return nil, usageError{fmt.Sprintf("-target-spec %s: %v", v, err)}
		}
	}
	return out, nil
}

func readInputs(a *args, targets []int64, specs []*pb.Target) ([]input, error) {
	if a.tensor != "" {
		shape, err := parseInts(strings.Split(a.shape, ","), "shape")
		if err != nil {
			return nil, err
		}
		raw, err := os.ReadFile(a.tensor)
		if err != nil {
			return nil, err
		}
		// Sent as read: the server checks the byte count against the shape and names a mismatch.
		tensor := &pb.Tensor{Data: raw, Shape: shape, Dtype: pb.DataType_DATA_TYPE_FLOAT32}
		image := &pb.Image{Source: &pb.Image_Tensor{Tensor: tensor}, Targets: targets, TargetSpecs: specs}
		return []input{{stem(a.tensor), image}}, nil
	}
	inputs := make([]input, len(a.images))
	for i, path := range a.images {
		contents, err := os.ReadFile(path)
		if err != nil {
			return nil, err
		}
		inputs[i] = input{stem(path), camserve.EncodedImage(contents, targets...)}
		inputs[i].image.TargetSpecs = specs
	}
	return inputs, nil
}

func stem(path string) string {
	base := filepath.Base(path)
	return strings.TrimSuffix(base, filepath.Ext(base))
}

func chooseModel(ctx context.Context, client *camserve.Client, model string) (string, error) {
	if model != "" {
		return model, nil
	}
	models, err := client.ListModels(ctx)
	if err != nil {
		return "", err
	}
	if len(models) != 1 {
		names := make([]string, len(models))
		for i, m := range models {
			names[i] = m.GetName()
		}
		return "", usageError{fmt.Sprintf("the server serves %s: choose one with -model", strings.Join(names, ", "))}
	}
	return models[0].GetName(), nil
}

// explain sends one request per input (one Explain call, or one stream for several) and returns the
// responses in input order.
func explain(ctx context.Context, client *camserve.Client, a *args, model string, inputs []input) ([]*pb.ExplainResponse, error) {
	requests := make([]*pb.ExplainRequest, len(inputs))
	for i, in := range inputs {
		requests[i] = &pb.ExplainRequest{Id: strconv.Itoa(i), Model: model, Images: []*pb.Image{in.image}, Methods: a.methods}
		if a.dtype == "uint8" {
			requests[i].Output = &pb.OutputOptions{Dtype: pb.DataType_DATA_TYPE_UINT8}
		}
	}
	if len(requests) == 1 {
		reply, err := client.Explain(ctx, requests[0])
		return []*pb.ExplainResponse{reply}, err
	}
	replies := make([]*pb.ExplainResponse, len(requests))
	err := client.ExplainStream(ctx, requests, func(reply *pb.ExplainResponse) error {
		if err := camserve.ResponseError(reply); err != nil {
			return fmt.Errorf("%s: %w", inputs[mustAtoi(reply.GetId())].name, err)
		}
		replies[mustAtoi(reply.GetId())] = reply
		return nil
	})
	return replies, err
}

func mustAtoi(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		panic(err)
	}
	return n
}

type jsonMap struct {
	Method      string    `json:"method"`
	TargetIndex int       `json:"target_index"`
	ClassID     int64     `json:"class_id"`
	Shape       []int     `json:"shape"`
	DType       string    `json:"dtype"`
	Data        []float32 `json:"data"`
}

type jsonPrediction struct {
	ClassID     int64   `json:"class_id"`
	Name        string  `json:"name"`
	Probability float32 `json:"probability"`
}

type jsonResult struct {
	Image       string           `json:"image"`
	Model       string           `json:"model"`
	Predictions []jsonPrediction `json:"predictions"`
	TargetIDs   []int64          `json:"target_ids"`
	TargetKinds []string         `json:"target_kinds"`
	Scores      []float32        `json:"target_scores"`
	Logits      []float32        `json:"logits"`
	Maps        []jsonMap        `json:"maps"`
}

func dtypeName(dtype pb.DataType) string {
	if dtype == pb.DataType_DATA_TYPE_UNSPECIFIED {
		return "float32"
	}
	return strings.ToLower(strings.TrimPrefix(dtype.String(), "DATA_TYPE_"))
}

// grey is a map as 8-bit pixels: uint8 maps as sent; float maps in [0, 1] times 255 (maps with larger
// values, normalize=false, are scaled by their maximum).
func grey(values *camserve.Array) []uint8 {
	scale := float32(1)
	if values.DType != pb.DataType_DATA_TYPE_UINT8 {
		peak := float32(1)
		for _, v := range values.Data {
			peak = float32(math.Max(float64(peak), float64(v)))
		}
		scale = 255 / peak
	}
	pixels := make([]uint8, len(values.Data))
	for i, v := range values.Data {
		pixels[i] = uint8(math.Round(math.Min(255, math.Max(0, float64(v*scale)))))
	}
	return pixels
}

func writeMap(path, format string, values *camserve.Array) error {
	if len(values.Shape) != 2 {
		return fmt.Errorf("map of shape %v is not [H, W]", values.Shape)
	}
	height, width, pixels := values.Shape[0], values.Shape[1], grey(values)
	if format == "pgm" {
		header := fmt.Sprintf("P5\n%d %d\n255\n", width, height)
		return os.WriteFile(path, append([]byte(header), pixels...), 0o644)
	}
	img := &image.Gray{Pix: pixels, Stride: width, Rect: image.Rect(0, 0, width, height)}
	file, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := png.Encode(file, img); err != nil {
		file.Close()
		return err
	}
	return file.Close()
}

// printJSON prints a message in the protobuf JSON mapping, with the .proto field names.
func printJSON(message proto.Message) error {
	encoded, err := protojson.MarshalOptions{UseProtoNames: true, Multiline: true}.Marshal(message)
	if err != nil {
		return err
	}
	_, err = fmt.Println(string(encoded))
	return err
}

func run(argv []string) error {
	a, err := parseArgs(argv)
	if err != nil {
		return err
	}
	targets, err := parseInts(a.targets, "target")
	if err != nil {
		return err
	}
	specs, err := parseSpecs(a.specs)
	if err != nil {
		return err
	}
	inputs, err := readInputs(a, targets, specs)
	if err != nil {
		return err
	}
	client, err := camserve.Dial(a.server, a.opts)
	if err != nil {
		return err
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(a.timeout*float64(time.Second)))
	defer cancel()

	if a.listModels {
		models, err := client.ListModels(ctx)
		if err != nil {
			return err
		}
		return printJSON(&pb.ListModelsResponse{Models: models})
	}
	model, err := chooseModel(ctx, client, a.model)
	if err != nil {
		return err
	}
	if a.info {
		info, err := client.GetModel(ctx, model)
		if err != nil {
			return err
		}
		return printJSON(info)
	}
	replies, err := explain(ctx, client, a, model, inputs)
	if err != nil {
		return err
	}
	results := make([]jsonResult, len(replies))
	for i, reply := range replies {
		if len(reply.GetImages()) != 1 {
			return fmt.Errorf("%s: the server answered %d images for 1", inputs[i].name, len(reply.GetImages()))
		}
		explained := reply.GetImages()[0]
		maps, err := camserve.Maps(explained)
		if err != nil {
			return fmt.Errorf("%s: %w", inputs[i].name, err)
		}
		logits, err := camserve.DecodeTensor(explained.GetLogits())
		if err != nil {
			return fmt.Errorf("%s: logits: %w", inputs[i].name, err)
		}
		result := jsonResult{Image: inputs[i].name, Model: reply.GetModel(), TargetIDs: explained.GetTargetIds(), Logits: logits.Data}
		for _, kind := range explained.GetTargetKinds() {
			result.TargetKinds = append(result.TargetKinds, strings.ToLower(strings.TrimPrefix(kind.String(), "TARGET_KIND_")))
		}
		result.Scores = explained.GetTargetScores()
		for _, p := range explained.GetPredictions() {
			result.Predictions = append(result.Predictions, jsonPrediction{p.GetClassId(), p.GetName(), p.GetProbability()})
		}
		for _, m := range maps {
			result.Maps = append(result.Maps, jsonMap{m.Method, m.TargetIndex, m.ClassID, m.Values.Shape, dtypeName(m.Values.DType), m.Values.Data})
			if a.outDir != "" {
				if err := os.MkdirAll(a.outDir, 0o755); err != nil {
					return err
				}
				name := fmt.Sprintf("%s_%s_t%d.%s", inputs[i].name, m.Method, m.TargetIndex, a.format)
				if err := writeMap(filepath.Join(a.outDir, name), a.format, m.Values); err != nil {
					return err
				}
			}
		}
		results[i] = result
		best := explained.GetPredictions()[0]
		fmt.Printf("%s: predicted %s (p = %.3f); %d map(s)\n", inputs[i].name, best.GetName(), best.GetProbability(), len(maps))
	}
	if a.jsonOut != "" {
		encoded, err := json.Marshal(results)
		if err != nil {
			return err
		}
		return os.WriteFile(a.jsonOut, encoded, 0o644)
	}
	return nil
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		var usage usageError
		if errors.As(err, &usage) {
			fmt.Fprintln(os.Stderr, "usage: camserve-explain -server HOST:PORT [flags] IMAGE... (-h: the flags)")
		}
		fmt.Fprintf(os.Stderr, "camserve-explain: error: %s\n", camserve.StatusText(err))
		os.Exit(2)
	}
}
