// Command authorizer is the WebSocket REQUEST authorizer (see package authorizer).
package main

import (
	"context"
	"os"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/wspresence/wspresence/internal/awsrt"
)

func main() {
	log := awsrt.Logger()
	h, err := awsrt.NewAuthorizer(context.Background(), awsrt.Config{
		JWTSecretParameter: os.Getenv("JWT_SECRET_PARAMETER"),
		JWTSecretTTL:       os.Getenv("JWT_SECRET_TTL"),
	}, log)
	if err != nil {
		log.Error("cannot start", "err", err)
		os.Exit(1)
	}
	lambda.StartHandlerFunc(h.Handle)
}
