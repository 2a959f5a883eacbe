// Command disconnect is the $disconnect handler: it appends ConnectionClosed (see package connection).
package main

import (
	"os"

	"github.com/wspresence/wspresence/internal/awsrt"
	"github.com/wspresence/wspresence/internal/lambda/connection"
)

func main() {
	awsrt.Start(awsrt.NewDisconnect, awsrt.Config{
		EventsTable:        os.Getenv("EVENTS_TABLE"),
		EventRetentionDays: os.Getenv("EVENT_RETENTION_DAYS"),
		ViewTable:          os.Getenv("VIEW_TABLE"),
	}, (*connection.Handler).Disconnect)
}
