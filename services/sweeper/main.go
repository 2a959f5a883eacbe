// Command sweeper is the scheduled sweeper of dead connections (see package sweeper).
package main

import (
	"context"
	"os"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/wspresence/wspresence/internal/awsrt"
)

func main() {
	log := awsrt.Logger()
	h, err := awsrt.NewSweeper(context.Background(), awsrt.Config{
		EventsTable:        os.Getenv("EVENTS_TABLE"),
		ViewTable:          os.Getenv("VIEW_TABLE"),
		WebSocketEndpoint:  os.Getenv("WEBSOCKET_ENDPOINT"),
		StaleAfter:         os.Getenv("STALE_AFTER"),
		TombstoneRetention: os.Getenv("TOMBSTONE_RETENTION"),
	}, log)
	if err != nil {
		log.Error("cannot start", "err", err)
		os.Exit(1)
	}
	lambda.StartHandlerFunc(h.Handle)
}
