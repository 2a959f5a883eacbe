package awsrt_test

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/wspresence/wspresence/internal/awsrt"
)

// TestEveryMissingSettingIsReported: a function missing settings names all of them at once.
func TestEveryMissingSettingIsReported(t *testing.T) {
	t.Setenv("AWS_REGION", "us-east-1")
	t.Setenv("AWS_ACCESS_KEY_ID", "x")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "y")
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	_, err := awsrt.NewSender(context.Background(), awsrt.Config{MaxReceives: "many"}, log)
	if err == nil {
		t.Fatal("a sender without settings started")
	}
	for _, want := range []string{"EVENTS_TABLE", "VIEW_TABLE", "EVENT_BUS_NAME", "WEBSOCKET_ENDPOINT", "MAX_RECEIVES", "HELD_QUEUE_URL", "HELD_QUEUE_ARN"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not name %s: %v", want, err)
		}
	}
	if _, err := awsrt.NewProjector(context.Background(), awsrt.Config{EventsTable: "ev", ViewTable: "vw", EventBus: "b"}, log); err == nil ||
		!strings.Contains(err.Error(), "GRACE_QUEUE_URL") {
		t.Fatalf("projector without a state machine: %v", err)
	}
	if _, err := awsrt.NewAuthorizer(context.Background(), awsrt.Config{JWTSecretTTL: "soon"}, log); err == nil {
		t.Fatal("a bad TTL was accepted")
	}
	if _, err := awsrt.NewConnection(context.Background(), awsrt.Config{EventsTable: "ev", ViewTable: "vw", EventBus: "b",
		WebSocketEndpoint: "https://x", RecoveryWindowSeconds: "901"}, log); err == nil || !strings.Contains(err.Error(), "RECOVERY_WINDOW_SECONDS") {
		t.Fatalf("a recovery window past the timer's bound: %v", err)
	}
	if _, err := awsrt.NewConnection(context.Background(), awsrt.Config{EventsTable: "ev", ViewTable: "vw"}, log); err == nil ||
		!strings.Contains(err.Error(), "WEBSOCKET_ENDPOINT") || !strings.Contains(err.Error(), "EVENT_BUS_NAME") {
		t.Fatalf("connect without the recover route's settings: %v", err)
	}
	h, err := awsrt.NewOnline(context.Background(), awsrt.Config{ViewTable: "vw"}, log)
	if err != nil || h == nil {
		t.Fatalf("online with its one setting: %v", err)
	}
}
