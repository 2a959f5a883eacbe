// Command grace ends an offline grace period when the state machine's wait is over (see
// package grace).
package main

import (
	"os"

	"github.com/wspresence/wspresence/internal/awsrt"
	"github.com/wspresence/wspresence/internal/lambda/grace"
)

func main() {
	awsrt.Start(awsrt.NewGrace, awsrt.Config{
		OnlineShards:        os.Getenv("ONLINE_SHARDS"),
		ViewTable:           os.Getenv("VIEW_TABLE"),
		OfflineGraceSeconds: os.Getenv("OFFLINE_GRACE_SECONDS"),
	}, (*grace.Handler).Handle)
}
