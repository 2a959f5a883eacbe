// Command grace ends offline grace periods when their timers come due on the grace queue
// (see package grace).
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
		GraceQueueURL:       os.Getenv("GRACE_QUEUE_URL"),
		OfflineGraceSeconds: os.Getenv("OFFLINE_GRACE_SECONDS"),
	}, (*grace.Handler).HandleQueue)
}
