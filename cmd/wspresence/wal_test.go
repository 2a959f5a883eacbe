package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/wspresence/wspresence/internal/localrt"
)

// walFrames returns the WAL's page size and the number of frames of its current
// generation (their salts match the header's): the frames a start would read back.
func walFrames(t *testing.T, wal []byte) (pageSize, frames int) {
	t.Helper()
	if len(wal) < 32 {
		t.Fatalf("the WAL is %d bytes: no header", len(wal))
	}
	pageSize = int(binary.BigEndian.Uint32(wal[8:12]))
	salt := wal[16:24]
	for off := 32; off+24+pageSize <= len(wal); off += 24 + pageSize {
		if string(wal[off+8:off+16]) != string(salt) {
			break
		}
		frames++
	}
	return pageSize, frames
}

// TestLostWALTailIsRefused: the server is killed (SIGKILL) while POST /messages is under
// load, then its write-ahead log is deleted, cut to half its frames, or has one byte of a
// late frame flipped. The start that follows refuses to serve the store with its committed
// tail gone, and says what was lost and how to go on; with --accept-loss it starts, under a
// new event epoch, and says what it accepted.
func TestLostWALTailIsRefused(t *testing.T) {
	for _, damage := range []string{"deleted", "cut", "flipped"} {
		t.Run(damage, func(t *testing.T) {
			dir := t.TempDir()
			a := startChild(t, dir)
			ctx, cancel := context.WithCancel(context.Background())
			var accepted atomic.Int64
			var wg sync.WaitGroup
			for w := range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for n := 0; ctx.Err() == nil; n++ {
						body := fmt.Sprintf(`{"UserId":"u%d","MessageId":"m-%d-%d","Body":"x"}`, w, w, n)
						req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+a.addr+"/messages", strings.NewReader(body))
						req.Header.Set("X-Api-Key", a.key)
						resp, err := http.DefaultClient.Do(req)
						if err != nil {
							continue
						}
						_, _ = io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						if resp.StatusCode == http.StatusAccepted {
							accepted.Add(1)
						}
					}
				}()
			}
			for accepted.Load() < 100 {
				time.Sleep(10 * time.Millisecond)
			}
			a.stop(t, syscall.SIGKILL) // under load
			cancel()
			wg.Wait()

			walPath := filepath.Join(dir, localrt.StoreFile+"-wal")
			wal, err := os.ReadFile(walPath)
			if err != nil {
				t.Fatal(err)
			}
			pageSize, frames := walFrames(t, wal)
			switch damage {
			case "deleted":
				err = os.Remove(walPath)
			case "cut":
				err = os.Truncate(walPath, int64(32+frames/2*(24+pageSize)))
			case "flipped":
				off := 32 + frames*3/4*(24+pageSize) + 24 + pageSize/2
				wal[off] ^= 0x10
				err = os.WriteFile(walPath, wal, 0o600)
			}
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%d messages accepted; the WAL held %d frames of %d bytes", accepted.Load(), frames, pageSize)

			cmd := childCommand(dir)
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("the store was served with its committed tail gone: %s", out)
			}
			for _, want := range []string{"committed tail is lost", "accepted messages", "wspresence restore", "--accept-loss"} {
				if !strings.Contains(string(out), want) {
					t.Fatalf("the refusal does not say %q: %s", want, out)
				}
			}

			b := startChild(t, dir, "--accept-loss")
			b.mu.Lock()
			logs := b.logs.String()
			b.mu.Unlock()
			if !strings.Contains(logs, "committed tail is lost") {
				t.Errorf("the start that accepted the loss does not log it: %s", logs)
			}
			b.stop(t, syscall.SIGTERM)
			// Once accepted, the store starts as usual.
			c := startChild(t, dir)
			c.stop(t, syscall.SIGTERM)
		})
	}
}
