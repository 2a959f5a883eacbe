// Command online is the GET /user/online handler of the HTTP API (see package online).
package main

import (
	"context"
	"os"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/wspresence/wspresence/internal/awsrt"
)

func main() {
	log := awsrt.Logger()
	h, err := awsrt.NewOnline(context.Background(), awsrt.Config{
		ViewTable: os.Getenv("VIEW_TABLE"),
	}, log)
	if err != nil {
		log.Error("cannot start", "err", err)
		os.Exit(1)
	}
	lambda.StartHandlerFunc(h.Handle)
}
