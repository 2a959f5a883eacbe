// Command projector is the DynamoDB Streams handler that keeps the view (see package projector).
package main

import (
	"os"

	"github.com/wspresence/wspresence/internal/awsrt"
	"github.com/wspresence/wspresence/internal/lambda/projector"
)

func main() {
	awsrt.Start(awsrt.NewProjector, awsrt.Config{
		OnlineShards:        os.Getenv("ONLINE_SHARDS"),
		EventsTable:         os.Getenv("EVENTS_TABLE"),
		ViewTable:           os.Getenv("VIEW_TABLE"),
		GraceQueueURL:       os.Getenv("GRACE_QUEUE_URL"),
		OfflineGraceSeconds: os.Getenv("OFFLINE_GRACE_SECONDS"),
	}, (*projector.Handler).Handle)
}
