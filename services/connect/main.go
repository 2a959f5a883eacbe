// Command connect is the $connect handler (it appends ConnectionOpened) and the $default
// handler (a client frame is activity); see package connection.
package main

import (
	"context"
	"os"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/wspresence/wspresence/internal/awsrt"
)

func main() {
	log := awsrt.Logger()
	h, err := awsrt.NewConnection(context.Background(), awsrt.Config{
		EventsTable: os.Getenv("EVENTS_TABLE"),
		ViewTable:   os.Getenv("VIEW_TABLE"),
	}, log)
	if err != nil {
		log.Error("cannot start", "err", err)
		os.Exit(1)
	}
	lambda.StartHandlerFunc(h.ConnectOrMessage)
}
