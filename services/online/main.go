// Command online is the GET /user/online handler of the HTTP API (see package online).
package main

import (
	"os"

	"github.com/wspresence/wspresence/internal/awsrt"
	"github.com/wspresence/wspresence/internal/lambda/online"
)

func main() {
	awsrt.Start(awsrt.NewOnline, awsrt.Config{
		OnlineShards: os.Getenv("ONLINE_SHARDS"),
		ViewTable:    os.Getenv("VIEW_TABLE"),
	}, (*online.Handler).Handle)
}
