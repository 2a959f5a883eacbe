package localrt_test

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"
	"github.com/wspresence/wspresence/internal/httperr"
	"github.com/wspresence/wspresence/internal/localrt"
)

// Three message ids that differ only in text a lenient decoder rewrites to U+FFFD: the
// invalid two are refused with invalid_utf8, the literal U+FFFD is delivered as itself.
func TestInvalidUTF8IsRefused(t *testing.T) {
	ts := startServer(t, t.TempDir(), nil)
	c := ts.dial("u8")
	waitFor(t, "u8 online", func() bool { s, _ := ts.online("userIds=u8"); return s[0].IsOnline })
	for _, body := range []string{
		"{\"MessageId\":\"\xff\",\"UserId\":\"u8\",\"Body\":\"one\"}",
		"{\"MessageId\":\"\xfe\",\"UserId\":\"u8\",\"Body\":\"two\"}",
		`{"MessageId":"\ud800","UserId":"u8","Body":"three"}`,
		"{\"UserId\":\"u8\",\"Body\":\"bad \xc3 body\"}",
		`[{"UserIds":["u8","\udc00"],"Body":"x"}]`,
	} {
		expectError(t, ts.do(http.MethodPost, "/messages", testKey, []byte(body)), http.StatusBadRequest, httperr.CodeInvalidUTF8)
	}
	ids := ts.send("{\"MessageId\":\"\uFFFD\",\"UserId\":\"u8\",\"Body\":\"kept\"}")
	if len(ids) != 1 || ids[0] != "\uFFFD" {
		t.Fatalf("ids %q", ids)
	}
	c.expectFrame(t, "kept") // the first frame: none of the refused messages was queued
	expectError(t, ts.do(http.MethodGet, "/user/online?userIds=a%FF", testKey, nil), http.StatusBadRequest, httperr.CodeInvalidUTF8)
}

// rawToken signs claims text as it is (HS256, the test secret).
func rawToken(t *testing.T, claims string) string {
	t.Helper()
	enc := base64.RawURLEncoding
	signing := enc.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`)) + "." + enc.EncodeToString([]byte(claims))
	sig, err := jwt.SigningMethodHS256.Sign(signing, []byte(testSecret))
	if err != nil {
		t.Fatal(err)
	}
	return signing + "." + enc.EncodeToString(sig)
}

// A token whose claims are not UTF-8, or whose user id could not be queried, is refused
// before the upgrade with a 401 that names the reason.
func TestTokenClaimsAreCheckedBeforeUpgrade(t *testing.T) {
	ts := startServer(t, t.TempDir(), nil)
	exp := time.Now().Add(time.Hour).Unix()
	cases := map[string]string{
		fmt.Sprintf("{\"userId\":\"a\xff\",\"exp\":%d}", exp):     "invalid_utf8",
		fmt.Sprintf(`{"userId":"\ud800","exp":%d}`, exp):          "invalid_utf8",
		fmt.Sprintf(`{"userId":"x,y","exp":%d}`, exp):             "user_id",
		fmt.Sprintf(`{"userId":" pad ","exp":%d}`, exp):           "user_id",
		fmt.Sprintf(`{"userId":"ok","exp":%d,"n":"\udfff"}`, exp): "invalid_utf8",
	}
	for claims, reason := range cases {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		conn, resp, err := websocket.Dial(ctx, ts.ws+"/?Authorization="+url.QueryEscape(rawToken(t, claims)), nil)
		cancel()
		if err == nil {
			conn.CloseNow()
			t.Fatalf("%q: connection accepted", claims)
		}
		body, _ := io.ReadAll(resp.Body)
		expectError(t, response{status: resp.StatusCode, body: body}, http.StatusUnauthorized, httperr.CodeUnauthorized)
		if !strings.Contains(string(body), reason) {
			t.Errorf("%q: %s, want the reason %s", claims, body, reason)
		}
	}
	// Every id that can connect can be asked for: a space inside and a percent sign are fine.
	for _, id := range []string{"a b", "50%", "a+b", "é"} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		conn, _, err := websocket.Dial(ctx, ts.ws+"/?Authorization="+rawToken(t, fmt.Sprintf(`{"userId":%q,"exp":%d}`, id, exp)), nil)
		cancel()
		if err != nil {
			t.Fatalf("dial as %q: %v", id, err)
		}
		defer conn.CloseNow()
		waitFor(t, id+" online", func() bool {
			s, _ := ts.online("userIds=" + url.QueryEscape(id) + ",other")
			return len(s) == 2 && s[0].UserID == id && s[0].IsOnline
		})
	}
}

// The HTTP server cuts idle keep-alive connections and slow requests, but not a WebSocket
// or an event stream that outlives the read timeout: the stream's heartbeat keeps coming.
func TestHTTPTimeouts(t *testing.T) {
	// Idle keep-alive: one request, then silence; the server closes the connection (the
	// read timeout is long here, so only the keep-alive timeout can close it).
	idle := startServer(t, t.TempDir(), func(c *localrt.Config) {
		c.ReadTimeout = time.Minute
		c.KeepAliveTimeout = 300 * time.Millisecond
	})
	conn, err := net.Dial("tcp", strings.TrimPrefix(idle.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("healthz: %v %v", resp, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	if closedWithin(t, conn, br, 5*time.Second) != nil {
		t.Fatal("an idle keep-alive connection was not closed")
	}

	ts := startServer(t, t.TempDir(), func(c *localrt.Config) {
		c.ReadHeaderTimeout = 300 * time.Millisecond
		c.ReadTimeout = 500 * time.Millisecond
		c.EventsHeartbeat = 100 * time.Millisecond
	})
	addr := strings.TrimPrefix(ts.base, "http://")

	// A request whose body never completes is cut at the read timeout.
	slow, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	fmt.Fprintf(slow, "POST /messages HTTP/1.1\r\nHost: x\r\nX-Api-Key: %s\r\nContent-Length: 1000\r\n\r\n{\"UserId\":", testKey)
	if closedWithin(t, slow, bufio.NewReader(slow), 3*time.Second) != nil {
		t.Fatal("a request with a stalled body was not cut")
	}

	// Headers sent one byte at a time, never ending: cut at the header timeout.
	hdr, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer hdr.Close()
	fmt.Fprintf(hdr, "GET /healthz HTTP/1.1\r\nHost: x\r\n")
	if closedWithin(t, hdr, bufio.NewReader(hdr), 3*time.Second) != nil {
		t.Fatal("a request with stalled headers was not cut")
	}

	// Long-lived routes outlive the read timeout.
	c := ts.dial("long")
	sse, err := http.NewRequest(http.MethodGet, ts.base+"/events", nil)
	if err != nil {
		t.Fatal(err)
	}
	sse.Header.Set("X-Api-Key", testKey)
	sresp, err := http.DefaultClient.Do(sse)
	if err != nil {
		t.Fatal(err)
	}
	defer sresp.Body.Close()
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(sresp.Body)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	heartbeats := 0
	deadline := time.After(4 * ts.cfg.ReadTimeout)
wait:
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("the event stream ended after %d heartbeats", heartbeats)
			}
			if strings.HasPrefix(l, ": keep-alive") {
				heartbeats++
			}
		case <-deadline:
			break wait
		}
	}
	if min := int(4 * ts.cfg.ReadTimeout / ts.cfg.EventsHeartbeat / 2); heartbeats < min {
		t.Fatalf("%d heartbeats in %s, want one every %s", heartbeats, 4*ts.cfg.ReadTimeout, ts.cfg.EventsHeartbeat)
	}
	ts.send(`{"UserId":"long","Body":"still here"}`)
	c.expectFrame(t, "still here")
}

// closedWithin reads conn until the server closes it; it returns an error if that does not
// happen within d.
func closedWithin(t *testing.T, conn net.Conn, br *bufio.Reader, d time.Duration) error {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, br)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return err
	}
	return nil
}

// Secrets are written whole or not at all; a file an older version left empty or cut short
// is replaced (with a log line), a usable one never is.
func TestSecretFiles(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, localrt.APIKeyFile), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, localrt.JWTSecretFile), []byte("3fa9c0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, dir, func(c *localrt.Config) { c.APIKey, c.JWTSecret = "", "" })
	if got := strings.Count(ts.logs.String(), "replacing a secret file that was never usable"); got != 2 {
		t.Fatalf("%d replacement log lines, want 2:\n%s", got, ts.logs.String())
	}
	key, jwtSecret := ts.srv.APIKey(), ts.srv.JWTSecret()
	if len(key) != 64 || len(jwtSecret) != 64 {
		t.Fatalf("generated secrets %q %q", key, jwtSecret)
	}
	ts.stop()
	for _, name := range []string{localrt.APIKeyFile, localrt.JWTSecretFile} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v", name, fi, err)
		}
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Fatalf("temporary file left: %s", e.Name())
		}
	}

	// The next start reuses both and replaces nothing.
	again := startServer(t, dir, func(c *localrt.Config) { c.APIKey, c.JWTSecret = "", "" })
	if again.srv.APIKey() != key || again.srv.JWTSecret() != jwtSecret || strings.Contains(again.logs.String(), "replacing") {
		t.Fatal("a usable secret was not reused as it was")
	}
	// A short but usable secret a user wrote is kept.
	own := t.TempDir()
	if err := os.WriteFile(filepath.Join(own, localrt.APIKeyFile), []byte("my-own-key-0123456\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := localrt.ReadSecret(own, localrt.APIKeyFile)
	if err != nil || s != "my-own-key-0123456" {
		t.Fatalf("ReadSecret = %q, %v", s, err)
	}
	if err := os.WriteFile(filepath.Join(own, localrt.JWTSecretFile), []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := localrt.ReadSecret(own, localrt.JWTSecretFile); !errors.Is(err, localrt.ErrUnusableSecret) {
		t.Fatalf("zero-filled secret: %v, want ErrUnusableSecret", err)
	}
}
