// Command sender is the SQS handler that delivers messages (see package sender).
package main

import (
	"context"
	"os"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/wspresence/wspresence/internal/awsrt"
)

func main() {
	log := awsrt.Logger()
	h, err := awsrt.NewSender(context.Background(), awsrt.Config{
		EventsTable:       os.Getenv("EVENTS_TABLE"),
		ViewTable:         os.Getenv("VIEW_TABLE"),
		EventBus:          os.Getenv("EVENT_BUS_NAME"),
		WebSocketEndpoint: os.Getenv("WEBSOCKET_ENDPOINT"),
		MaxReceives:       os.Getenv("MAX_RECEIVES"),
	}, log)
	if err != nil {
		log.Error("cannot start", "err", err)
		os.Exit(1)
	}
	lambda.StartHandlerFunc(h.Handle)
}
