package localrt_test

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wspresence/wspresence/internal/httperr"
	"github.com/wspresence/wspresence/internal/localrt"
	"github.com/wspresence/wspresence/internal/store/sqlite"
)

// eventIDs reads GET /events resuming at cursor (a Last-Event-ID; "" for ?after=0) until it
// has n ids, and returns them with the response's status (and no ids when it is not 200).
func (ts *testServer) eventIDs(cursor string, n int) (int, []string) {
	ts.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ts.base+"/events?after=0", nil)
	req.Header.Set("X-Api-Key", testKey)
	if cursor != "" {
		req.Header.Set("Last-Event-ID", cursor)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		ts.t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return resp.StatusCode, nil
	}
	var ids []string
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for len(ids) < n && sc.Scan() {
		if id, ok := strings.CutPrefix(sc.Text(), "id: "); ok {
			ids = append(ids, id)
		}
	}
	return resp.StatusCode, ids
}

// TestRestoredStoreAnswersOldEventIDs: after a store is restored from an older backup, a
// subscriber resuming with an event id it read before the restore is told (410
// events_epoch_changed), whether the id is the stream's own (EPOCH:SEQ) or a bare sequence
// number past the restored history; it is never answered with a silent stream whose ids
// name other events. Ids of the restored history resume as usual.
func TestRestoredStoreAnswersOldEventIDs(t *testing.T) {
	dir := t.TempDir()
	ts := startServer(t, dir, nil)
	for i := range 3 {
		ts.send(`{"UserId":"before-` + strconv.Itoa(i) + `","Body":"x"}`)
	}
	if status, ids := ts.eventIDs("", 3); status != http.StatusOK || len(ids) != 3 {
		t.Fatalf("before the backup: %d %v", status, ids)
	}
	backup := filepath.Join(t.TempDir(), "backup.db")
	if err := sqlite.Backup(context.Background(), filepath.Join(dir, localrt.StoreFile), backup); err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		ts.send(`{"UserId":"after-` + strconv.Itoa(i) + `","Body":"x"}`)
	}
	_, ids := ts.eventIDs("", 13)
	if len(ids) != 13 {
		t.Fatalf("read %d event ids, want 13: %v", len(ids), ids)
	}
	last := ids[len(ids)-1]
	ts.stop()

	if _, err := localrt.Restore(context.Background(), dir, backup); err != nil {
		t.Fatal(err)
	}
	again := startServer(t, dir, nil)
	bare := last[strings.LastIndex(last, ":")+1:]
	for _, cursor := range []string{last, ids[1], bare} {
		r := again.doWith(http.MethodGet, "/events", map[string]string{"Last-Event-ID": cursor})
		expectError(t, r, http.StatusGone, httperr.CodeEpochChanged)
	}
	// The restored history is read from its start, under the new epoch.
	status, restored := again.eventIDs("", 3)
	if status != http.StatusOK || len(restored) != 3 {
		t.Fatalf("the restored history: %d %v", status, restored)
	}
	for _, id := range restored {
		if strings.HasPrefix(id, last[:strings.LastIndex(last, ":")+1]) {
			t.Fatalf("the restored store kept the old epoch: %s", id)
		}
	}
	again.send(`{"UserId":"later","Body":"x"}`)
	if status, next := again.eventIDs(restored[2], 1); status != http.StatusOK || len(next) != 1 {
		t.Fatalf("resuming in the new epoch: %d %v", status, next)
	}
}

// doWith sends a body-less request with the API key and headers, and reads the whole reply.
func (ts *testServer) doWith(method, path string, headers map[string]string) response {
	ts.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, ts.base+path, nil)
	if err != nil {
		ts.t.Fatal(err)
	}
	req.Header.Set("X-Api-Key", testKey)
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		ts.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: data}
}
