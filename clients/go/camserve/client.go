// Package camserve is a Go client of the camserve.v1 gRPC explanation service: it connects (plaintext,
// TLS or mTLS, with an optional bearer token), calls Explain, ExplainStream, ListModels and GetModel,
// and decodes the maps the service sends as raw little-endian bytes into []float32 with their shape.
//
// Errors are the gRPC status errors of the calls: status.Code(err) and status.Convert(err).Message()
// give the server's code and message (a stream's per-request errors are turned into the same kind).
package camserve

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"unicode"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	pb "github.com/camserve/camserve/clients/go/camservev1"
)

// DefaultMaxMessageBytes bounds the replies the client accepts (maps of many images are large).
const DefaultMaxMessageBytes = 64 << 20

// Options of a connection. The zero value is a plaintext connection without a token.
type Options struct {
	TLS        bool   // speak TLS (implied by CAFile, CertFile or KeyFile)
	CAFile     string // PEM CA that verifies the server; empty: the system's roots
	CertFile   string // PEM client certificate for mTLS (with KeyFile)
	KeyFile    string // PEM key of CertFile
	ServerName string // name the server's certificate is checked against, when the address differs
	Token      string // bearer token sent as "authorization: Bearer <token>" with every call
	// MaxMessageBytes bounds a reply's size; 0: DefaultMaxMessageBytes.
	MaxMessageBytes int
}

// Client is a connection to a camserve server; safe for concurrent use.
type Client struct {
	conn *grpc.ClientConn
	stub pb.ExplainServiceClient
}

// Dial connects to address ("host:port"); the connection is made lazily, on the first call.
func Dial(address string, opts Options) (*Client, error) {
	maxBytes := opts.MaxMessageBytes
	if maxBytes == 0 {
		maxBytes = DefaultMaxMessageBytes
	}
	dial := []grpc.DialOption{grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxBytes))}
	if opts.TLS || opts.CAFile != "" || opts.CertFile != "" || opts.KeyFile != "" {
		config, err := tlsConfig(opts)
		if err != nil {
			return nil, err
		}
		dial = append(dial, grpc.WithTransportCredentials(credentials.NewTLS(config)))
	} else if opts.ServerName != "" {
		return nil, fmt.Errorf("camserve: ServerName is only used with TLS")
	} else {
		dial = append(dial, grpc.WithInsecure())
	}
	if opts.Token != "" {
		dial = append(dial, grpc.WithPerRPCCredentials(bearerToken(opts.Token)))
	}
	conn, err := grpc.Dial(address, dial...)
	if err != nil {
		return nil, fmt.Errorf("camserve: dial %s: %w", address, err)
	}
	return &Client{conn: conn, stub: pb.NewExplainServiceClient(conn)}, nil
}

func tlsConfig(opts Options) (*tls.Config, error) {
	config := &tls.Config{ServerName: opts.ServerName, MinVersion: tls.VersionTLS12}
	if opts.CAFile != "" {
		pem, err := os.ReadFile(opts.CAFile)
		if err != nil {
			return nil, fmt.Errorf("camserve: CAFile: %w", err)
		}
		config.RootCAs = x509.NewCertPool()
		if !config.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("camserve: CAFile %s holds no PEM certificate", opts.CAFile)
		}
	}
	if (opts.CertFile == "") != (opts.KeyFile == "") {
		return nil, fmt.Errorf("camserve: a client certificate needs its key: set CertFile and KeyFile, or neither")
	}
	if opts.CertFile != "" {
		pair, err := tls.LoadX509KeyPair(opts.CertFile, opts.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("camserve: client certificate: %w", err)
		}
		config.Certificates = []tls.Certificate{pair}
	}
	return config, nil
}

// bearerToken sends "authorization: Bearer <token>" with every call. It does not insist on TLS: the
// server decides (a plaintext port on 127.0.0.1 behind a TLS proxy is a valid setup).
type bearerToken string

func (t bearerToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(t)}, nil
}

func (bearerToken) RequireTransportSecurity() bool { return false }

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Stub is the generated client, for calls and options this package does not wrap.
func (c *Client) Stub() pb.ExplainServiceClient { return c.stub }

// ListModels returns the models the server holds.
func (c *Client) ListModels(ctx context.Context) ([]*pb.ModelInfo, error) {
	reply, err := c.stub.ListModels(ctx, &pb.ListModelsRequest{})
	if err != nil {
		return nil, err
	}
	return reply.GetModels(), nil
}

// GetModel returns one model's description (input size, preprocessing, classes, supported methods).
func (c *Client) GetModel(ctx context.Context, name string) (*pb.ModelInfo, error) {
	return c.stub.GetModel(ctx, &pb.GetModelRequest{Name: name})
}

// Explain explains the request's images; a failure is the call's gRPC status error.
func (c *Client) Explain(ctx context.Context, request *pb.ExplainRequest) (*pb.ExplainResponse, error) {
	return c.stub.Explain(ctx, request)
}

// ExplainStream sends the requests over one stream and calls handle with each response as it arrives
// (in completion order; match them by id). A response for a request that failed is handed over with
// its Error set (ResponseError turns it into a status error) and the stream goes on. It returns the
// first error of the stream itself, or of handle (which ends the stream).
func (c *Client) ExplainStream(
	ctx context.Context, requests []*pb.ExplainRequest, handle func(*pb.ExplainResponse) error,
) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.stub.ExplainStream(ctx)
	if err != nil {
		return err
	}
	sent := make(chan error, 1)
	go func() {
		for _, request := range requests {
			if err := stream.Send(request); err != nil {
				sent <- err // io.EOF: the server ended the stream; Recv below returns its status
				return
			}
		}
		sent <- stream.CloseSend()
	}()
	for {
		reply, err := stream.Recv()
		if err == io.EOF {
			if err := <-sent; err != nil && err != io.EOF {
				return err
			}
			return nil
		}
		if err != nil {
			return err
		}
		if err := handle(reply); err != nil {
			return err
		}
	}
}

// ResponseError is nil for a successful stream response, else its error as a gRPC status error.
func ResponseError(response *pb.ExplainResponse) error {
	if e := response.GetError(); e != nil {
		return status.Error(codes.Code(e.GetCode()), e.GetMessage())
	}
	return nil
}

// EncodedImage is an image given as PNG or JPEG file contents, with the classes to explain
// (class ids >= 0, or -k for the k-th best class; none: the best class).
func EncodedImage(contents []byte, targets ...int64) *pb.Image {
	return &pb.Image{Source: &pb.Image_Encoded{Encoded: contents}, Targets: targets}
}

// TensorImage is an already preprocessed image: float32 [3, H, W] at the model's input size and
// normalisation (see ModelInfo's InputSize, Mean and Std).
func TensorImage(values []float32, shape []int64, targets ...int64) *pb.Image {
	return &pb.Image{Source: &pb.Image_Tensor{Tensor: EncodeFloat32(values, shape)}, Targets: targets}
}

// CodeName is a status code's canonical name, as the other camserve clients print it ("NOT_FOUND").
func CodeName(code codes.Code) string {
	camel := code.String() // "NotFound"; "OK" stays "OK"
	var name strings.Builder
	for i, r := range camel {
		if i > 0 && unicode.IsUpper(r) && unicode.IsLower(rune(camel[i-1])) {
			name.WriteByte('_')
		}
		name.WriteRune(unicode.ToUpper(r))
	}
	return name.String()
}

// StatusText describes err with its gRPC status as "CODE: message" (also when err wraps a status
// error, e.g. "a.png: NOT_FOUND: ..."); other errors as err.Error().
func StatusText(err error) string {
	var carrier interface {
		error
		GRPCStatus() *status.Status
	}
	if !errors.As(err, &carrier) {
		return err.Error()
	}
	s := carrier.GRPCStatus()
	return strings.Replace(err.Error(), carrier.Error(), CodeName(s.Code())+": "+s.Message(), 1)
}
