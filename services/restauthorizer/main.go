// Command restauthorizer is the HTTP API's API-key authorizer (see package apikey), used
// when the stack's RestAuthMode is ApiKey.
package main

import (
	"os"

	"github.com/wspresence/wspresence/internal/awsrt"
	"github.com/wspresence/wspresence/internal/lambda/apikey"
)

func main() {
	awsrt.Start(awsrt.NewAPIKeyAuthorizer, awsrt.Config{
		APIKeyParameter: os.Getenv("API_KEY_PARAMETER"),
		APIKeyTTL:       os.Getenv("API_KEY_TTL"),
	}, (*apikey.Handler).Handle)
}
