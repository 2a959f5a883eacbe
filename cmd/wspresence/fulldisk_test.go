package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/auth"
	"github.com/wspresence/wspresence/internal/localrt"
)

// smallFS mounts a 40 MB tmpfs for the test (unmounted at its end): a real filesystem that
// fills up. Mounting needs root, as CI runs.
func smallFS(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a size-limited tmpfs needs root (CI runs as root)")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount a 40 MB tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v %s", dir, err, out)
		}
	})
	return dir
}

// freeBytes is the free space of the filesystem holding dir.
func freeBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * int64(st.Bsize)
}

// grow appends n bytes to the file at path, as many as fit.
func grow(t *testing.T, path string, n int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 64<<10)
	for n > 0 {
		w, err := f.Write(chunk[:min(n, int64(len(chunk)))])
		if err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				return
			}
			t.Fatal(err)
		}
		n -= int64(w)
	}
}

// get answers a GET on the child's API.
func (c *child) get(t *testing.T, path string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+c.addr+path, nil)
	req.Header.Set("X-Api-Key", c.key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// post sends one message of size bytes to user and returns the status.
func (c *child) post(t *testing.T, user, id string, size int) int {
	t.Helper()
	body := fmt.Sprintf(`{"UserId":%q,"MessageId":%q,"Body":%q}`, user, id, strings.Repeat("x", size))
	req, _ := http.NewRequest(http.MethodPost, "http://"+c.addr+"/messages", strings.NewReader(body))
	req.Header.Set("X-Api-Key", c.key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// onlineOf answers GET /user/online?userIds=... as user → online.
func (c *child) onlineOf(t *testing.T, users []string) map[string]bool {
	t.Helper()
	status, body := c.get(t, "/user/online?userIds="+strings.Join(users, ","))
	if status != http.StatusOK {
		t.Fatalf("GET /user/online: %d %s", status, body)
	}
	var list []struct {
		UserID   string `json:"UserId"`
		IsOnline bool   `json:"IsOnline"`
	}
	if err := json.Unmarshal([]byte(body), &list); err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, s := range list {
		out[s.UserID] = s.IsOnline
	}
	return out
}

// metric reads one unlabelled metric of the child's GET /metrics.
func (c *child) metric(t *testing.T, name string) int64 {
	t.Helper()
	_, body := c.get(t, "/metrics")
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return int64(f)
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// logsOnFailure logs the child's logs when the test failed.
func logsOnFailure(t *testing.T, which string, c *child) {
	if !t.Failed() {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	t.Logf("logs of %s:\n%s", which, c.logs.String())
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startOnSmallFS starts the server on a data dir of its own in a small tmpfs (smallFS),
// killed at the test's end, its logs shown (as what) if the test failed: fs is the
// filesystem's root, filler a path beside the data dir for the file that fills it.
func startOnSmallFS(t *testing.T, what string) (a *child, fs, dir, filler string) {
	t.Helper()
	fs = smallFS(t)
	dir = filepath.Join(fs, "data")
	filler = filepath.Join(fs, "filler")
	a = startChild(t, dir)
	t.Cleanup(func() { _ = a.cmd.Process.Kill(); _ = a.cmd.Wait() })
	t.Cleanup(func() { logsOnFailure(t, what, a) })
	return a, fs, dir, filler
}

// TestFullDiskOnASmallFilesystem runs the real server on a 40 MB tmpfs: with clients
// connected and messages accepted, the disk is filled (by a filler file and the server's
// own writes) until POST /messages is refused; then /healthz reports cannot_write, clients
// that close are shown offline at once, the server is killed (SIGKILL) and restarts on the
// full disk (reads served, writes refused); once space is freed, writes resume without a
// restart, every close is written and published once (one UserOffline per user), and every
// message answered 202 has its outcome.
func TestFullDiskOnASmallFilesystem(t *testing.T) {
	a, fs, dir, filler := startOnSmallFS(t, "the first server")
	secret, err := localrt.ReadSecret(dir, localrt.JWTSecretFile)
	if err != nil {
		t.Fatal(err)
	}
	var users []string
	var conns []*websocket.Conn
	for i := range 30 {
		u := fmt.Sprintf("c%d", i)
		tok, _ := auth.Mint([]byte(secret), u, time.Hour, time.Now())
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		conn, _, err := websocket.Dial(ctx, "ws://"+a.addr+"/?Authorization="+tok, nil)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		conn.SetReadLimit(1 << 20)
		go func() { // every frame, until the connection ends
			for {
				if _, _, err := conn.Read(context.Background()); err != nil {
					return
				}
			}
		}()
		users, conns = append(users, u), append(conns, conn)
	}
	waitUntil(t, "the clients online", func() bool {
		on := a.onlineOf(t, users)
		for _, u := range users {
			if !on[u] {
				return false
			}
		}
		return true
	})
	// The WAL's bound is a quarter of the free space, not its 64 MiB default.
	if limit := a.metric(t, "wspresence_store_wal_limit_bytes"); limit < 1<<20 || limit > freeBytes(t, fs)/4+1<<20 {
		t.Fatalf("wspresence_store_wal_limit_bytes %d on a 40 MB filesystem", limit)
	} else {
		t.Logf("WAL bound %d bytes, reserve %d bytes, on a 40 MB filesystem", limit, a.metric(t, "wspresence_store_reserve_bytes"))
	}

	// Fill: the filler leaves 4 MB; then messages (16 KB each) and more filler until the
	// server refuses one.
	grow(t, filler, freeBytes(t, fs)-4<<20)
	var accepted []string
	refused := false
	for round := 0; !refused; round++ {
		if round > 400 {
			t.Fatalf("the disk never filled: %d bytes free", freeBytes(t, fs))
		}
		for i := range 10 {
			id := fmt.Sprintf("m-%d-%d", round, i)
			switch status := a.post(t, users[(round*10+i)%len(users)], id, 16<<10); status {
			case http.StatusAccepted:
				accepted = append(accepted, id)
			case http.StatusServiceUnavailable:
				refused = true
			default:
				t.Fatalf("POST /messages: %d", status)
			}
		}
		grow(t, filler, 128<<10)
	}
	t.Logf("%d messages accepted before the disk was full (%d bytes free)", len(accepted), freeBytes(t, fs))
	// The store gives its reserve back and truncates its WAL with the room it makes (which
	// may let writes resume for a while): the filler takes all but 256 KB, under what the
	// store writes with, until the store stays refused, its WAL truncated.
	healthz := func(c *child) bool {
		status, body := c.get(t, "/healthz")
		return status == http.StatusServiceUnavailable && strings.Contains(body, "cannot_write")
	}
	waitUntil(t, "/healthz cannot_write, the WAL truncated", func() bool {
		grow(t, filler, freeBytes(t, fs)-256<<10)
		if !healthz(a) {
			return false
		}
		time.Sleep(1200 * time.Millisecond) // a checkpoint
		return a.metric(t, "wspresence_store_wal_bytes") == 0 && healthz(a)
	})
	t.Logf("full: %d bytes free, the reserve given back", freeBytes(t, fs))

	// Clients that close are shown offline at once, their closes not written.
	closing := users[:10]
	for _, c := range conns[:10] {
		_ = c.Close(websocket.StatusNormalClosure, "")
	}
	waitUntil(t, "the closed clients offline", func() bool {
		on := a.onlineOf(t, users)
		for i, u := range users {
			if on[u] != (i >= len(closing)) {
				return false
			}
		}
		return true
	})
	if !healthz(a) {
		t.Fatal("/healthz does not report cannot_write while the disk is full")
	}
	a.stop(t, syscall.SIGKILL)

	// A restart on the full disk: reads served, writes refused, /healthz says why.
	b := startChild(t, dir)
	t.Cleanup(func() { _ = b.cmd.Process.Kill(); _ = b.cmd.Wait() })
	t.Cleanup(func() { logsOnFailure(t, "the restarted server", b) })
	if !healthz(b) {
		t.Fatal("/healthz does not report cannot_write after a restart on a full disk")
	}
	if on := b.onlineOf(t, users); len(on) != len(users) {
		t.Fatalf("GET /user/online: %v", on)
	} else {
		for u, online := range on {
			if online {
				t.Fatalf("%s shown online after the restart: its connection died with the killed process", u)
			}
		}
	}
	if status := b.post(t, "c0", "refused", 10); status != http.StatusServiceUnavailable {
		t.Fatalf("POST /messages on a full disk: %d", status)
	}

	// Space freed: writes resume without a restart; the closes are written and published.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "/healthz ok once space is freed", func() bool { s, _ := b.get(t, "/healthz"); return s == http.StatusOK })
	// (503 with Retry-After until the outcomes held back meanwhile are recorded.)
	for n := 0; ; n++ {
		id := fmt.Sprintf("after-%d", n)
		status := b.post(t, "c0", id, 10)
		if status == http.StatusAccepted {
			accepted = append(accepted, id)
			break
		}
		if status != http.StatusServiceUnavailable || n > 100 {
			t.Fatalf("POST /messages once space is freed: %d", status)
		}
		time.Sleep(100 * time.Millisecond)
	}
	var envs []events.Envelope
	waitUntil(t, "every close published and every accepted message's outcome", func() bool {
		envs = outbox(t, b)
		offline, outcomes := map[string]int{}, map[string]int{}
		for _, env := range envs {
			var d detail
			_ = json.Unmarshal(env.Detail, &d)
			switch env.DetailType {
			case events.DetailUserOffline:
				offline[d.UserID]++
			case events.DetailMessageDelivered, events.DetailMessageUndeliverable:
				outcomes[d.MessageID]++
			}
		}
		for _, u := range users {
			if offline[u] != 1 {
				return false
			}
		}
		for _, id := range accepted {
			if outcomes[id] != 1 {
				return false
			}
		}
		return true
	})
	checkTransitions(t, envs)
	b.mu.Lock()
	logs := b.logs.String()
	b.mu.Unlock()
	if n := strings.Count(logs, `"level":"ERROR"`); n != 1 {
		t.Errorf("%d ERROR lines after the restart, want the one change of state: %s", n, logs)
	}
	b.stop(t, syscall.SIGTERM)
}

// TestHealthzFindsADiskFilledWhileIdle fills the server's filesystem while it writes
// nothing: /healthz reports cannot_write without waiting for a write to find out, a write
// is refused, and once space is freed /healthz is ok again.
func TestHealthzFindsADiskFilledWhileIdle(t *testing.T) {
	a, fs, _, filler := startOnSmallFS(t, "the server")
	healthz := func() (int, string) { return a.get(t, "/healthz") }
	if status, body := healthz(); status != http.StatusOK {
		t.Fatalf("/healthz before the disk is full: %d %s", status, body)
	}
	// Another process takes all but 256 KB, under what the store writes with.
	waitUntil(t, "/healthz cannot_write on a disk filled by another process", func() bool {
		grow(t, filler, freeBytes(t, fs)-256<<10)
		status, body := healthz()
		return status == http.StatusServiceUnavailable && strings.Contains(body, "cannot_write")
	})
	if status := a.post(t, "u1", "refused", 10); status != http.StatusServiceUnavailable {
		t.Fatalf("POST /messages on a full disk: %d", status)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "/healthz ok once space is freed", func() bool { s, _ := healthz(); return s == http.StatusOK })
	if status := a.post(t, "u1", "accepted", 10); status != http.StatusAccepted {
		t.Fatalf("POST /messages once space is freed: %d", status)
	}
	a.stop(t, syscall.SIGTERM)
}
