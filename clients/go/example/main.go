// Explains one PNG with Grad-CAM and prints where the map peaks: the smallest use of the Go client.
//
//	example 127.0.0.1:50051 digit.png
package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"google.golang.org/grpc/status"

	"github.com/camserve/camserve/clients/go/camserve"
	pb "github.com/camserve/camserve/clients/go/camservev1"
)

func main() {
	address, path := os.Args[1], os.Args[2]
	client, err := camserve.Dial(address, camserve.Options{Token: os.Getenv("CAMSERVE_TOKEN")})
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	png, err := os.ReadFile(path)
	if err != nil {
		log.Fatal(err)
	}
	reply, err := client.Explain(ctx, &pb.ExplainRequest{
		Model:   "digits",
		Methods: []string{"gradcam"},
		Images:  []*pb.Image{camserve.EncodedImage(png, -1)}, // -1: the best class
	})
	if err != nil {
		log.Fatalf("%v (code %v: %s)", err, status.Code(err), status.Convert(err).Message())
	}
	image := reply.GetImages()[0]
	maps, err := camserve.Maps(image)
	if err != nil {
		log.Fatal(err)
	}
	m := maps[0].Values // [H, W] float32, row-major
	peak := 0
	for i, v := range m.Data {
		if v > m.Data[peak] {
			peak = i
		}
	}
	fmt.Printf("class %d: %s map %v peaks at row %d, column %d\n",
		image.GetTargetIds()[0], maps[0].Method, m.Shape, peak/m.Shape[1], peak%m.Shape[1])
}
