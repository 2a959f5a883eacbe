package localrt_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// TestEveryMessageOnceUnderLoad: 5,000 messages to 50 users (one connection each), sent as
// 50 concurrent requests of 100, reach their user exactly once each: no frame lost, none
// doubled, whatever batches the pump reads them in.
func TestEveryMessageOnceUnderLoad(t *testing.T) {
	ts := startServer(t, t.TempDir(), nil)
	const users, batches, perBatch = 50, 50, 100
	var mu sync.Mutex
	seen := map[string]int{}
	total := 0
	for u := range users {
		c, _, err := websocket.Dial(context.Background(), ts.ws+"/?Authorization="+ts.token(fmt.Sprintf("load-%d", u)), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseNow()
		go func() {
			for {
				_, data, err := c.Read(context.Background())
				if err != nil {
					return
				}
				mu.Lock()
				seen[string(data)]++
				total++
				mu.Unlock()
			}
		}()
	}
	var wg sync.WaitGroup
	for b := range batches {
		var msgs []map[string]string
		for i := range perBatch {
			k := b*perBatch + i
			msgs = append(msgs, map[string]string{"UserId": fmt.Sprintf("load-%d", k%users), "Body": fmt.Sprintf("m%d", k)})
		}
		body, _ := json.Marshal(msgs)
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest(http.MethodPost, ts.base+"/messages", bytes.NewReader(body))
			req.Header.Set("X-Api-Key", testKey)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusAccepted {
				t.Errorf("POST /messages: %d", resp.StatusCode)
			}
		}()
	}
	wg.Wait()
	const n = batches * perBatch
	waitForLong(t, "every frame", 60*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return total >= n })
	time.Sleep(200 * time.Millisecond) // a doubled frame would arrive by now
	mu.Lock()
	defer mu.Unlock()
	if total != n || len(seen) != n {
		t.Fatalf("%d frames for %d messages (%d distinct)", total, n, len(seen))
	}
}

func waitForLong(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
