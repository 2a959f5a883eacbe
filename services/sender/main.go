// Command sender is the SQS handler that delivers messages, and ends held messages'
// recovery windows from their timers' queue (see package sender).
package main

import (
	"os"

	"github.com/wspresence/wspresence/internal/awsrt"
	"github.com/wspresence/wspresence/internal/lambda/sender"
)

func main() {
	awsrt.Start(awsrt.NewSender, awsrt.Config{
		OnlineShards:          os.Getenv("ONLINE_SHARDS"),
		EventsTable:           os.Getenv("EVENTS_TABLE"),
		EventRetentionDays:    os.Getenv("EVENT_RETENTION_DAYS"),
		ViewTable:             os.Getenv("VIEW_TABLE"),
		EventBus:              os.Getenv("EVENT_BUS_NAME"),
		WebSocketEndpoint:     os.Getenv("WEBSOCKET_ENDPOINT"),
		MaxReceives:           os.Getenv("MAX_RECEIVES"),
		OfflineGraceSeconds:   os.Getenv("OFFLINE_GRACE_SECONDS"),
		RecoveryWindowSeconds: os.Getenv("RECOVERY_WINDOW_SECONDS"),
		HeldQueueURL:          os.Getenv("HELD_QUEUE_URL"),
		HeldQueueARN:          os.Getenv("HELD_QUEUE_ARN"),
	}, (*sender.Handler).Handle)
}
