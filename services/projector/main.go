// Command projector is the DynamoDB Streams handler that keeps the view (see package projector).
package main

import (
	"context"
	"os"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/wspresence/wspresence/internal/awsrt"
)

func main() {
	log := awsrt.Logger()
	h, err := awsrt.NewProjector(context.Background(), awsrt.Config{
		EventsTable:          os.Getenv("EVENTS_TABLE"),
		ViewTable:            os.Getenv("VIEW_TABLE"),
		EventBus:             os.Getenv("EVENT_BUS_NAME"),
		GraceStateMachineARN: os.Getenv("GRACE_STATE_MACHINE_ARN"),
		OfflineGraceSeconds:  os.Getenv("OFFLINE_GRACE_SECONDS"),
	}, log)
	if err != nil {
		log.Error("cannot start", "err", err)
		os.Exit(1)
	}
	lambda.StartHandlerFunc(h.Handle)
}
