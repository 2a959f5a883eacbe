// Command publisher relays the transitions recorded in the view table's outbox to
// EventBridge (see package publisher).
package main

import (
	"os"

	"github.com/wspresence/wspresence/internal/awsrt"
	"github.com/wspresence/wspresence/internal/lambda/publisher"
)

func main() {
	awsrt.Start(awsrt.NewPublisher, awsrt.Config{
		OnlineShards:        os.Getenv("ONLINE_SHARDS"),
		EventBus:            os.Getenv("EVENT_BUS_NAME"),
		ViewTable:           os.Getenv("VIEW_TABLE"),
		OfflineGraceSeconds: os.Getenv("OFFLINE_GRACE_SECONDS"),
	}, (*publisher.Handler).Handle)
}
