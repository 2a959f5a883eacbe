// Command sender is the SQS handler that delivers messages (see package sender).
package main

import (
	"os"

	"github.com/wspresence/wspresence/internal/awsrt"
	"github.com/wspresence/wspresence/internal/lambda/sender"
)

func main() {
	awsrt.Start(awsrt.NewSender, awsrt.Config{
		OnlineShards:        os.Getenv("ONLINE_SHARDS"),
		EventsTable:         os.Getenv("EVENTS_TABLE"),
		ViewTable:           os.Getenv("VIEW_TABLE"),
		EventBus:            os.Getenv("EVENT_BUS_NAME"),
		WebSocketEndpoint:   os.Getenv("WEBSOCKET_ENDPOINT"),
		MaxReceives:         os.Getenv("MAX_RECEIVES"),
		OfflineGraceSeconds: os.Getenv("OFFLINE_GRACE_SECONDS"),
	}, (*sender.Handler).Handle)
}
