package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/wspresence/wspresence/internal/auth"
	"github.com/wspresence/wspresence/internal/localrt"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func noEnv(string) string { return "" }

// TestServeAndClientCommands runs `serve` with generated secrets, then drives it with
// `token`, `send` and `online`, all reading the secrets from the data dir.
func TestServeAndClientCommands(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	var out, errOut syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--addr", "127.0.0.1:0", "--data", dir, "--offline-grace", "100ms"}, &out, &errOut, noEnv)
	}()
	addrRe := regexp.MustCompile(`listening on (127\.0\.0\.1:\d+)`)
	var addr string
	deadline := time.Now().Add(10 * time.Second)
	for addr == "" {
		if m := addrRe.FindStringSubmatch(out.String()); m != nil {
			addr = m[1]
		} else if time.Now().After(deadline) {
			t.Fatalf("serve printed no address; stdout %q stderr %q", out.String(), errOut.String())
		} else {
			time.Sleep(20 * time.Millisecond)
		}
	}
	// The secrets were generated into the data dir with mode 0600.
	for _, f := range []string{localrt.JWTSecretFile, localrt.APIKeyFile} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v", f, st, err)
		}
	}
	key, _ := localrt.ReadSecret(dir, localrt.APIKeyFile)
	if !strings.Contains(out.String(), key) {
		t.Fatal("the start-up lines do not show the API key")
	}
	// The printed sample token is valid.
	tokRe := regexp.MustCompile(`(?m)^\s+(eyJ[\w-]+\.[\w-]+\.[\w-]+)\s*$`)
	m := tokRe.FindStringSubmatch(out.String())
	if m == nil {
		t.Fatalf("no sample token in %q", out.String())
	}
	secret, _ := localrt.ReadSecret(dir, localrt.JWTSecretFile)
	v, _ := auth.NewVerifier([]byte(secret), auth.Policy{})
	if uid, err := v.Verify(m[1]); err != nil || uid != sampleUser {
		t.Fatalf("sample token: %q %v", uid, err)
	}

	cli := func(args ...string) string {
		t.Helper()
		var o, e bytes.Buffer
		if code := run(ctx, append(args, "--data", dir), &o, &e, noEnv); code != 0 {
			t.Fatalf("wspresence %v: exit %d: %s", args, code, e.String())
		}
		return strings.TrimSpace(o.String())
	}
	tok := cli("token", "--user", "cli-user", "--ttl", "10m")
	dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
	defer dcancel()
	conn, _, err := websocket.Dial(dctx, "ws://"+addr+"/?Authorization="+tok, nil)
	if err != nil {
		t.Fatalf("dial with the CLI's token: %v", err)
	}
	defer conn.CloseNow()
	var status []struct {
		UserId      string
		IsOnline    bool
		Connections int
	}
	for i := 0; ; i++ {
		if err := json.Unmarshal([]byte(cli("online", "--url", "http://"+addr, "--users", "cli-user")), &status); err != nil {
			t.Fatal(err)
		}
		if status[0].IsOnline {
			break
		}
		if i > 200 {
			t.Fatal("cli-user never shown online")
		}
		time.Sleep(10 * time.Millisecond)
	}
	sent := cli("send", "--url", "http://"+addr, "--user", "cli-user", "--body", "from the CLI")
	if !strings.Contains(sent, "messageIds") {
		t.Fatalf("send printed %q", sent)
	}
	_, data, err := conn.Read(dctx)
	if err != nil || string(data) != "from the CLI" {
		t.Fatalf("received %q, %v", data, err)
	}

	// A second server on the same data dir is refused.
	var o2, e2 bytes.Buffer
	if code := run(ctx, []string{"serve", "--addr", "127.0.0.1:0", "--data", dir}, &o2, &e2, noEnv); code == 0 || !strings.Contains(e2.String(), "in use") {
		t.Fatalf("second serve: exit %d, %s", code, e2.String())
	}

	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("serve exited %d: %s", code, errOut.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatal("serve did not stop on cancel")
	}
	// Offline now: rebuild works and keeps the view.
	var ro, re bytes.Buffer
	if code := run(context.Background(), []string{"rebuild", "--data", dir}, &ro, &re, noEnv); code != 0 || !strings.Contains(ro.String(), "view rebuilt") {
		t.Fatalf("rebuild: exit %d %s %s", code, ro.String(), re.String())
	}
	if strings.Contains(errOut.String(), tok) || strings.Contains(errOut.String(), secret) {
		t.Fatal("a token or the secret appeared in the logs")
	}
}

func TestConfigurationErrorsAreReportedTogether(t *testing.T) {
	var o, e bytes.Buffer
	env := func(k string) string {
		return map[string]string{"WSPRESENCE_OFFLINE_GRACE": "soon", "WSPRESENCE_LOG_LEVEL": "loud"}[k]
	}
	code := run(context.Background(), []string{"serve", "--addr", "nowhere", "--max-connections-per-user", "0", "--jwt-secret", "short", "--webhooks", "ftp://example"}, &o, &e, env)
	if code != 1 {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{"WSPRESENCE_OFFLINE_GRACE", "addr \"nowhere\"", "max connections per user", "jwt secret", "log level", "webhook"} {
		if !strings.Contains(e.String(), want) {
			t.Errorf("error output lacks %q:\n%s", want, e.String())
		}
	}
}

func TestHelpAndUsage(t *testing.T) {
	for _, cmd := range []string{"serve", "token", "send", "online", "rebuild"} {
		var o, e bytes.Buffer
		if code := run(context.Background(), []string{cmd, "--help"}, &o, &e, noEnv); code != 0 || !strings.Contains(e.String(), "Usage: wspresence "+cmd) {
			t.Errorf("%s --help: exit %d, %q", cmd, code, e.String())
		}
	}
	var o, e bytes.Buffer
	if code := run(context.Background(), []string{"bogus"}, &o, &e, noEnv); code != 2 {
		t.Errorf("unknown command: exit %d", code)
	}
	if code := run(context.Background(), []string{"token"}, &o, &e, noEnv); code != 1 {
		t.Errorf("token without --user: exit %d", code)
	}
	e.Reset()
	if code := run(context.Background(), []string{"token", "--user", "x", "--data", t.TempDir()}, &o, &e, noEnv); code != 1 || !strings.Contains(e.String(), "no JWT secret") {
		t.Errorf("token with no secret anywhere: exit %d %q", code, e.String())
	}
}

// serveFor runs `serve` on dir until the returned stop is called, and returns its address;
// it fails t if serve does not start.
func serveFor(t *testing.T, dir string) (addr string, stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var out, errOut syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--addr", "127.0.0.1:0", "--data", dir}, &out, &errOut, noEnv)
	}()
	addrRe := regexp.MustCompile(`listening on (127\.0\.0\.1:\d+)`)
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if m := addrRe.FindStringSubmatch(out.String()); m != nil {
			addr = m[1]
			break
		}
		select {
		case code := <-done:
			cancel()
			t.Fatalf("serve exited %d: %s", code, errOut.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve printed no address; stderr %q", errOut.String())
		}
	}
	return addr, func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("serve exited %d: %s", code, errOut.String())
		}
	}
}

// TestBackupAndRestore: a backup taken while the server runs is a consistent store; when
// the store is later emptied the server refuses to start (naming the restore), and after
// `restore` it starts on the backed-up history.
func TestBackupAndRestore(t *testing.T) {
	dir := t.TempDir()
	addr, stop := serveFor(t, dir)
	url := "http://" + addr
	var o, e bytes.Buffer
	if code := run(context.Background(), []string{"send", "--url", url, "--data", dir, "--user", "kept", "--body", "before the backup"}, &o, &e, noEnv); code != 0 {
		t.Fatalf("send: %d %s", code, e.String())
	}
	backup := filepath.Join(t.TempDir(), "backup.db")
	o.Reset()
	if code := run(context.Background(), []string{"backup", "--data", dir, "--to", backup}, &o, &e, noEnv); code != 0 {
		t.Fatalf("backup while serving: %d %s", code, e.String())
	}
	stop()
	if err := os.Truncate(filepath.Join(dir, localrt.StoreFile), 0); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"-wal", "-shm"} {
		_ = os.Remove(filepath.Join(dir, localrt.StoreFile+f))
	}
	var so, se syncBuffer
	if code := run(context.Background(), []string{"serve", "--addr", "127.0.0.1:0", "--data", dir}, &so, &se, noEnv); code == 0 ||
		!strings.Contains(se.String()+so.String(), "restore") {
		t.Fatalf("serve on an emptied store: exit %d, %s", code, se.String())
	}
	o.Reset()
	e.Reset()
	if code := run(context.Background(), []string{"restore", "--data", dir, "--from", backup}, &o, &e, noEnv); code != 0 {
		t.Fatalf("restore: %d %s", code, e.String())
	}
	addr, stop = serveFor(t, dir)
	defer stop()
	key, _ := localrt.ReadSecret(dir, localrt.APIKeyFile)
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/events", nil)
	req.Header.Set("X-Api-Key", key)
	req.Header.Set("Last-Event-ID", "0")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := http.DefaultClient.Do(req.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf := make([]byte, 64<<10)
	var seen strings.Builder
	for !strings.Contains(seen.String(), "MessageUndeliverable") {
		n, err := resp.Body.Read(buf)
		seen.Write(buf[:n])
		if err != nil {
			t.Fatalf("the restored store's events: %v (read %q)", err, seen.String())
		}
	}
	if !strings.Contains(seen.String(), `"userId":"kept"`) {
		t.Fatalf("the restored history lacks the message's outcome: %s", seen.String())
	}
}

// TestBackupCarriesSecrets: a backup carries the data dir's generated secrets (and is
// readable by its owner only), so a restore into a new dir serves the same API key and
// tokens, and says what it put in place; --without-secrets leaves them out and says so.
func TestBackupCarriesSecrets(t *testing.T) {
	dir := t.TempDir()
	addr, stop := serveFor(t, dir)
	var o, e bytes.Buffer
	if code := run(context.Background(), []string{"send", "--url", "http://" + addr, "--data", dir, "--user", "kept", "--body", "x"}, &o, &e, noEnv); code != 0 {
		t.Fatalf("send: %d %s", code, e.String())
	}
	backup := filepath.Join(t.TempDir(), "backup.db")
	o.Reset()
	if code := run(context.Background(), []string{"backup", "--data", dir, "--to", backup}, &o, &e, noEnv); code != 0 {
		t.Fatalf("backup: %d %s", code, e.String())
	}
	if !strings.Contains(o.String(), localrt.APIKeyFile) || !strings.Contains(o.String(), localrt.JWTSecretFile) {
		t.Fatalf("backup does not say it carries the secrets: %s", o.String())
	}
	if st, err := os.Stat(backup); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("a backup carrying secrets: %v, mode %v", err, st.Mode())
	}
	bare := filepath.Join(t.TempDir(), "bare.db")
	o.Reset()
	if code := run(context.Background(), []string{"backup", "--data", dir, "--to", bare, "--without-secrets"}, &o, &e, noEnv); code != 0 ||
		!strings.Contains(o.String(), "401") {
		t.Fatalf("backup --without-secrets: %d %s %s", code, o.String(), e.String())
	}
	stop()

	fresh := filepath.Join(t.TempDir(), "data")
	o.Reset()
	if code := run(context.Background(), []string{"restore", "--data", fresh, "--from", backup}, &o, &e, noEnv); code != 0 {
		t.Fatalf("restore: %d %s", code, e.String())
	}
	for _, name := range []string{localrt.APIKeyFile, localrt.JWTSecretFile} {
		if !strings.Contains(o.String(), filepath.Join(fresh, name)+" put in place") {
			t.Errorf("restore does not say it put %s in place: %s", name, o.String())
		}
		want, _ := localrt.ReadSecret(dir, name)
		if got, err := localrt.ReadSecret(fresh, name); err != nil || got != want {
			t.Errorf("%s in the new dir: %v, not the backed-up one", name, err)
		}
	}
	if !strings.Contains(o.String(), "restored from") || !strings.Contains(o.String(), "epoch") {
		t.Errorf("restore does not say what it put in place: %s", o.String())
	}
	addr, stop = serveFor(t, fresh)
	defer stop()
	// The old dir's API key is the new dir's.
	o.Reset()
	if code := run(context.Background(), []string{"send", "--url", "http://" + addr, "--data", dir, "--user", "again", "--body", "x"}, &o, &e, noEnv); code != 0 {
		t.Fatalf("send with the backed-up API key: %d %s", code, e.String())
	}
	o.Reset()
	if code := run(context.Background(), []string{"restore", "--data", filepath.Join(t.TempDir(), "bare"), "--from", bare}, &o, &e, noEnv); code != 0 ||
		!strings.Contains(o.String(), "no secrets") {
		t.Fatalf("restore of a backup without secrets: %d %s %s", code, o.String(), e.String())
	}
}
