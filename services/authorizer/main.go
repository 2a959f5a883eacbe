// Command authorizer is the WebSocket REQUEST authorizer (see package authorizer).
package main

import (
	"os"

	"github.com/wspresence/wspresence/internal/awsrt"
	"github.com/wspresence/wspresence/internal/lambda/authorizer"
)

func main() {
	awsrt.Start(awsrt.NewAuthorizer, awsrt.Config{
		JWTSecretParameter: os.Getenv("JWT_SECRET_PARAMETER"),
		JWTSecretTTL:       os.Getenv("JWT_SECRET_TTL"),
		JWTAlgorithms:      os.Getenv("JWT_ALGORITHMS"),
		JWTExpiryRequired:  os.Getenv("JWT_EXPIRY_REQUIRED"),
	}, (*authorizer.Handler).Handle)
}
