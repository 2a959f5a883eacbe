// Command sweeper is the scheduled sweeper of dead connections (see package sweeper).
package main

import (
	"os"

	"github.com/wspresence/wspresence/internal/awsrt"
	"github.com/wspresence/wspresence/internal/lambda/sweeper"
)

func main() {
	awsrt.Start(awsrt.NewSweeper, awsrt.Config{
		EventsTable:        os.Getenv("EVENTS_TABLE"),
		ViewTable:          os.Getenv("VIEW_TABLE"),
		WebSocketEndpoint:  os.Getenv("WEBSOCKET_ENDPOINT"),
		StaleAfter:         os.Getenv("STALE_AFTER"),
		TombstoneRetention: os.Getenv("TOMBSTONE_RETENTION"),
	}, (*sweeper.Handler).Handle)
}
