// Command sweeper is the scheduled reconciler of the view (see package sweeper).
package main

import (
	"os"

	"github.com/wspresence/wspresence/internal/awsrt"
	"github.com/wspresence/wspresence/internal/lambda/sweeper"
)

func main() {
	awsrt.Start(awsrt.NewSweeper, awsrt.Config{
		OnlineShards:          os.Getenv("ONLINE_SHARDS"),
		EventsTable:           os.Getenv("EVENTS_TABLE"),
		EventRetentionDays:    os.Getenv("EVENT_RETENTION_DAYS"),
		ViewTable:             os.Getenv("VIEW_TABLE"),
		EventBus:              os.Getenv("EVENT_BUS_NAME"),
		WebSocketEndpoint:     os.Getenv("WEBSOCKET_ENDPOINT"),
		OfflineGraceSeconds:   os.Getenv("OFFLINE_GRACE_SECONDS"),
		ReconcileLimit:        os.Getenv("RECONCILE_LIMIT"),
		GraceDeadLetterURL:    os.Getenv("GRACE_DLQ_URL"),
		StreamFailureQueueURL: os.Getenv("STREAM_FAILURE_QUEUE_URL"),
		ViewStreamARN:         os.Getenv("VIEW_STREAM_ARN"),
	}, (*sweeper.Handler).Handle)
}
