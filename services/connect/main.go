// Command connect is the $connect handler (it appends ConnectionOpened and folds it into
// the user's state at once, so a message sent right after reaches the connection; it
// selects the wspresence.v1 subprotocol for clients that ask for it), the recover handler
// (the replay of what a recovering client missed) and the $default handler (a client
// frame is activity); see package connection.
package main

import (
	"os"

	"github.com/wspresence/wspresence/internal/awsrt"
	"github.com/wspresence/wspresence/internal/lambda/connection"
)

func main() {
	awsrt.Start(awsrt.NewConnection, awsrt.Config{
		OnlineShards:          os.Getenv("ONLINE_SHARDS"),
		EventsTable:           os.Getenv("EVENTS_TABLE"),
		EventRetentionDays:    os.Getenv("EVENT_RETENTION_DAYS"),
		ViewTable:             os.Getenv("VIEW_TABLE"),
		OfflineGraceSeconds:   os.Getenv("OFFLINE_GRACE_SECONDS"),
		MaxConnectionsPerUser: os.Getenv("MAX_CONNECTIONS_PER_USER"),
		RecoveryWindowSeconds: os.Getenv("RECOVERY_WINDOW_SECONDS"),
		WebSocketEndpoint:     os.Getenv("WEBSOCKET_ENDPOINT"),
		EventBus:              os.Getenv("EVENT_BUS_NAME"),
	}, (*connection.Handler).ConnectOrMessage)
}
