package localrt_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/wspresence/wspresence/internal/auth"
	"github.com/wspresence/wspresence/internal/localrt"
)

// BenchmarkPostAndDeliver measures one message's way through a real server: a
// POST /messages of one message to a user with one real WebSocket connection, its 202,
// and the frame read by the client. The allocations reported are the whole process's
// (the client's included) per delivered message; -memprofile tells the server's apart.
func BenchmarkPostAndDeliver(b *testing.B) {
	cfg := localrt.DefaultConfig()
	cfg.Addr = "127.0.0.1:0"
	cfg.DataDir = b.TempDir()
	cfg.JWTSecret = testSecret
	cfg.APIKey = testKey
	srv, err := localrt.New(context.Background(), cfg, slog.New(slog.NewJSONHandler(io.Discard, nil)))
	if err != nil {
		b.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			b.Errorf("shutdown: %v", err)
		}
	})
	addr := srv.Addr().String()
	tok, err := auth.Mint([]byte(testSecret), "bench-user", time.Hour, time.Now())
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	conn, _, err := websocket.Dial(ctx, "ws://"+addr+"/?Authorization="+tok, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.CloseNow()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
	post := func(i int) {
		body := []byte(`{"UserId":"bench-user","Body":"message ` + strconv.Itoa(i) + ` of the benchmark"}`)
		req, err := http.NewRequest(http.MethodPost, "http://"+addr+"/messages", bytes.NewReader(body))
		if err != nil {
			b.Fatal(err)
		}
		req.Header.Set("X-Api-Key", testKey)
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			b.Fatalf("POST /messages: %d", resp.StatusCode)
		}
		_, frame, err := conn.Read(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if !bytes.Contains(frame, []byte("message "+strconv.Itoa(i)+" ")) {
			b.Fatalf("frame %q for message %d", frame, i)
		}
	}
	for i := range 100 { // warm the pools, the connections and the store
		post(-1 - i)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		post(i)
	}
}
