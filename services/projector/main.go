// Command projector is the DynamoDB Streams handler that keeps the view (see package projector).
package main

import (
	"os"

	"github.com/wspresence/wspresence/internal/awsrt"
	"github.com/wspresence/wspresence/internal/lambda/projector"
)

func main() {
	awsrt.Start(awsrt.NewProjector, awsrt.Config{
		OnlineShards:         os.Getenv("ONLINE_SHARDS"),
		EventsTable:          os.Getenv("EVENTS_TABLE"),
		ViewTable:            os.Getenv("VIEW_TABLE"),
		GraceStateMachineARN: os.Getenv("GRACE_STATE_MACHINE_ARN"),
		OfflineGraceSeconds:  os.Getenv("OFFLINE_GRACE_SECONDS"),
	}, (*projector.Handler).Handle)
}
