package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/wspresence/wspresence/internal/auth"
	"github.com/wspresence/wspresence/internal/localrt"
	"github.com/wspresence/wspresence/internal/recovery"
)

// streamClient follows a user's stream over connections as the client library does.
type streamClient struct {
	mu sync.Mutex
	// conn is the connection follow opened last.
	conn   *websocket.Conn
	epoch  string
	offset int64
	bodies []string
	errs   []string
}

// follow connects to addr, recovers from the client's position and reads until the
// connection ends (the returned channel closes then); answered gets the recovered frame.
func (sc *streamClient) follow(t *testing.T, addr, token string) (answered chan map[string]any, ended chan struct{}) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, "ws://"+addr+"/?Authorization="+token,
		&websocket.DialOptions{Subprotocols: []string{recovery.Subprotocol}})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { conn.CloseNow() })
	sc.mu.Lock()
	sc.conn = conn
	req := `{"action":"recover"}`
	if sc.epoch != "" {
		req = fmt.Sprintf(`{"action":"recover","epoch":%q,"offset":%d}`, sc.epoch, sc.offset)
	}
	sc.mu.Unlock()
	if err := conn.Write(ctx, websocket.MessageText, []byte(req)); err != nil {
		t.Fatalf("recover: %v", err)
	}
	answered, ended = make(chan map[string]any, 1), make(chan struct{})
	go func() {
		defer close(ended)
		for {
			_, data, err := conn.Read(context.Background())
			if err != nil {
				return
			}
			var f map[string]any
			_ = json.Unmarshal(data, &f)
			sc.mu.Lock()
			epoch, _ := f["epoch"].(string)
			offset, _ := f["offset"].(float64)
			switch f["type"] {
			case "message":
				switch {
				case epoch == sc.epoch && int64(offset) <= sc.offset: // a duplicate, dropped
				case epoch == sc.epoch && int64(offset) != sc.offset+1:
					sc.errs = append(sc.errs, fmt.Sprintf("offset %v after %d", offset, sc.offset))
				default:
					sc.epoch, sc.offset = epoch, int64(offset)
					sc.bodies = append(sc.bodies, f["body"].(string))
				}
			case "recovered":
				sc.epoch, sc.offset = epoch, int64(offset)
				answered <- f
			}
			sc.mu.Unlock()
		}
	}()
	return answered, ended
}

func (sc *streamClient) received() []string {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	return append([]string(nil), sc.bodies...)
}

func awaitAnswer(t *testing.T, answered chan map[string]any) map[string]any {
	t.Helper()
	select {
	case a := <-answered:
		return a
	case <-time.After(10 * time.Second):
		t.Fatal("no recovered frame within 10s")
		return nil
	}
}

// postNumbered posts messages m<from>... to user one by one until stop closes, and
// returns the bodies answered 202.
func postNumbered(c *child, user string, from int, stop chan struct{}) []string {
	var acked []string
	for i := from; ; i++ {
		select {
		case <-stop:
			return acked
		default:
		}
		body := fmt.Sprintf("m%d", i)
		req, _ := http.NewRequest(http.MethodPost, "http://"+c.addr+"/messages", strings.NewReader(fmt.Sprintf(`{"userId":%q,"body":%q}`, user, body)))
		req.Header.Set("X-Api-Key", c.key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return acked // the server was killed
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusAccepted {
			acked = append(acked, body)
		}
	}
}

// TestRecoveryCrash: the server is killed (SIGKILL) while a sender posts to a recovering
// client; restarted on the same data dir, the client recovers from its position: every
// message acknowledged with 202 before the kill or after the restart arrives once, in
// order (a message whose answer the kill cut may arrive too, in its place).
func TestRecoveryCrash(t *testing.T) {
	dir := t.TempDir()
	c := startChild(t, dir)
	first := c
	t.Cleanup(func() { _ = first.cmd.Process.Kill() }) // if the test stops early
	secret, err := localrt.ReadSecret(dir, localrt.JWTSecretFile)
	if err != nil {
		t.Fatal(err)
	}
	token := func() string {
		tok, err := auth.Mint([]byte(secret), "rita", time.Hour, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	sc := &streamClient{}
	answered, ended := sc.follow(t, c.addr, token())
	if a := awaitAnswer(t, answered); a["reason"] != "fresh" {
		t.Fatalf("first answer %v", a)
	}
	stop := make(chan struct{})
	done := make(chan []string)
	go func() { done <- postNumbered(c, "rita", 1, stop) }()
	time.Sleep(300 * time.Millisecond) // mid-stream
	c.stop(t, syscall.SIGKILL)
	close(stop)
	acked := <-done
	<-ended
	if len(acked) == 0 {
		t.Fatal("nothing was acknowledged before the kill")
	}

	c = startChild(t, dir)
	second := c
	t.Cleanup(func() { _ = second.cmd.Process.Kill() })
	defer c.stop(t, syscall.SIGTERM)
	answered, _ = sc.follow(t, c.addr, token())
	if a := awaitAnswer(t, answered); a["recovered"] != true {
		t.Fatalf("answer after the restart %v, want recovered", a)
	}
	stop = make(chan struct{})
	go func() { done <- postNumbered(c, "rita", len(acked)+1000, stop) }()
	time.Sleep(200 * time.Millisecond)
	close(stop)
	after := <-done
	want := append(append([]string(nil), acked...), after...)
	deadline := time.Now().Add(10 * time.Second)
	for !containsInOrder(sc.received(), want) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	got := sc.received()
	if !containsInOrder(got, want) {
		t.Fatalf("received %d messages, %d acknowledged: an acknowledged message is missing or out of order", len(got), len(want))
	}
	seen := map[string]bool{}
	for _, b := range got {
		if seen[b] {
			t.Fatalf("%s received twice", b)
		}
		seen[b] = true
	}
	if len(got) > len(want)+1 {
		t.Fatalf("received %d messages for %d acknowledged and one cut by the kill", len(got), len(want))
	}
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if len(sc.errs) > 0 {
		t.Fatalf("gaps: %v", sc.errs)
	}
	t.Logf("recovery across a kill: %d acknowledged before it, %d after the restart, %d received", len(acked), len(after), len(got))
}

// containsInOrder reports whether want is a subsequence of got.
func containsInOrder(got, want []string) bool {
	i := 0
	for _, g := range got {
		if i < len(want) && g == want[i] {
			i++
		}
	}
	return i == len(want)
}

// TestRecoveryReplaysAcrossAKill: a recovering client goes away, messages are acknowledged
// for its user, and the server is killed (SIGKILL); restarted on the same data dir, it
// rebuilds its streams from the store, and the client, recovering from its position, is
// replayed every acknowledged message once, in order, then gets the live ones.
func TestRecoveryReplaysAcrossAKill(t *testing.T) {
	dir := t.TempDir()
	c := startChild(t, dir)
	first := c
	t.Cleanup(func() { _ = first.cmd.Process.Kill() })
	secret, err := localrt.ReadSecret(dir, localrt.JWTSecretFile)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := auth.Mint([]byte(secret), "vera", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	sc := &streamClient{}
	answered, ended := sc.follow(t, c.addr, tok)
	if a := awaitAnswer(t, answered); a["reason"] != "fresh" {
		t.Fatalf("first answer %v", a)
	}
	post := func(c *child, body string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, "http://"+c.addr+"/messages", strings.NewReader(fmt.Sprintf(`{"userId":"vera","body":%q}`, body)))
		req.Header.Set("X-Api-Key", c.key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("POST %s: %d", body, resp.StatusCode)
		}
	}
	post(c, "live")
	deadline := time.Now().Add(10 * time.Second)
	for len(sc.received()) == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	// The client goes away (its connection cut by a proxy, say): what follows is held.
	sc.mu.Lock()
	conn := sc.conn
	sc.mu.Unlock()
	conn.CloseNow()
	<-ended
	var missed []string
	for i := range 20 {
		missed = append(missed, fmt.Sprintf("missed-%d", i))
		post(c, missed[i])
	}
	c.stop(t, syscall.SIGKILL)

	c = startChild(t, dir)
	second := c
	t.Cleanup(func() { _ = second.cmd.Process.Kill() })
	defer c.stop(t, syscall.SIGTERM)
	answered, _ = sc.follow(t, c.addr, tok)
	a := awaitAnswer(t, answered)
	if a["recovered"] != true || a["replayed"] != float64(len(missed)) {
		t.Fatalf("answer after the kill %v, want recovered with %d replayed", a, len(missed))
	}
	post(c, "after")
	want := append(append([]string{"live"}, missed...), "after")
	deadline = time.Now().Add(10 * time.Second)
	for len(sc.received()) < len(want) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := sc.received(); !reflect.DeepEqual(got, want) {
		t.Fatalf("received %v, want %v", got, want)
	}
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if len(sc.errs) > 0 {
		t.Fatalf("gaps: %v", sc.errs)
	}
}
