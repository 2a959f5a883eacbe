// Command wspresence-logbench measures the candidate engines of the local runtime's durable
// log: group-committed appends with fsync on, as the log needs them (an append is
// acknowledged only once it is on disk). W writers append records of the size of a
// connection event in a closed loop; one committer takes everything queued while the
// previous commit was syncing and commits it as one batch. It reports appends per second,
// the append latency (queued to acknowledged) at p50 and p99, and the mean batch size.
//
// Engines (all pure Go): sqlite-current (modernc SQLite, WAL, synchronous=FULL, the event
// table as the store has it: a unique key index and columns), sqlite-lean (one table, seq
// and data, no secondary index), bbolt (one bucket, one Update per batch), pebble (one
// batch committed with Sync).
//
// Usage: go run ./cmd/wspresence-logbench [--seconds 5] [--writers 16,128] [--engines ...]
package main

import (
	"database/sql"
	"encoding/binary"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
	bolt "go.etcd.io/bbolt"
	_ "modernc.org/sqlite"
)

// engine commits batches durably.
type engine interface {
	commit(batch [][]byte, firstSeq uint64) error
	close() error
}

type sqliteEngine struct {
	db     *sql.DB
	insert string
	keyed  bool
}

func openSQLite(dir string, keyed bool) (engine, error) {
	db, err := sql.Open("sqlite", filepath.Join(dir, "log.db")+"?_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)&_pragma=busy_timeout(5000)")
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(1)
	schema := `CREATE TABLE log (seq INTEGER PRIMARY KEY, data BLOB NOT NULL)`
	insert := `INSERT INTO log (seq, data) VALUES (?, ?)`
	if keyed {
		schema = `CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE, type TEXT NOT NULL,
			user_id TEXT NOT NULL, connection_id TEXT NOT NULL, at INTEGER NOT NULL, data TEXT NOT NULL)`
		insert = `INSERT INTO events (key, type, user_id, connection_id, at, data) VALUES (?, 'ConnectionOpened', 'u', 'c', ?, ?)`
	}
	if _, err := db.Exec(schema); err != nil {
		return nil, err
	}
	return &sqliteEngine{db: db, insert: insert, keyed: keyed}, nil
}

func (e *sqliteEngine) commit(batch [][]byte, first uint64) error {
	tx, err := e.db.Begin()
	if err != nil {
		return err
	}
	stmt, err := tx.Prepare(e.insert)
	if err != nil {
		_ = tx.Rollback()
		return err
	}
	for i, rec := range batch {
		seq := first + uint64(i)
		if e.keyed {
			_, err = stmt.Exec("ConnectionOpened#"+strconv.FormatUint(seq, 10), int64(seq), string(rec))
		} else {
			_, err = stmt.Exec(int64(seq), rec)
		}
		if err != nil {
			_ = tx.Rollback()
			return err
		}
	}
	_ = stmt.Close()
	return tx.Commit()
}

func (e *sqliteEngine) close() error { return e.db.Close() }

type boltEngine struct{ db *bolt.DB }

var bucket = []byte("log")

func openBolt(dir string) (engine, error) {
	db, err := bolt.Open(filepath.Join(dir, "log.bolt"), 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return nil, err
	}
	err = db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucketIfNotExists(bucket); return err })
	return &boltEngine{db: db}, err
}

func (e *boltEngine) commit(batch [][]byte, first uint64) error {
	return e.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
		for i, rec := range batch {
			var k [8]byte
			binary.BigEndian.PutUint64(k[:], first+uint64(i))
			if err := b.Put(k[:], rec); err != nil {
				return err
			}
		}
		return nil
	})
}

func (e *boltEngine) close() error { return e.db.Close() }

type pebbleEngine struct{ db *pebble.DB }

func openPebble(dir string) (engine, error) {
	db, err := pebble.Open(filepath.Join(dir, "pebble"), &pebble.Options{})
	return &pebbleEngine{db: db}, err
}

func (e *pebbleEngine) commit(batch [][]byte, first uint64) error {
	b := e.db.NewBatch()
	defer b.Close()
	for i, rec := range batch {
		var k [8]byte
		binary.BigEndian.PutUint64(k[:], first+uint64(i))
		if err := b.Set(k[:], rec, nil); err != nil {
			return err
		}
	}
	return b.Commit(pebble.Sync)
}

func (e *pebbleEngine) close() error { return e.db.Close() }

// request is one append waiting for its commit.
type request struct {
	rec  []byte
	done chan error
}

type result struct {
	engine           string
	writers          int
	appends, commits int
	seconds          float64
	p50, p99         time.Duration
}

func run(name string, open func(string) (engine, error), writers int, d time.Duration, record []byte) (result, error) {
	dir, err := os.MkdirTemp("", "logbench-")
	if err != nil {
		return result{}, err
	}
	defer os.RemoveAll(dir)
	eng, err := open(dir)
	if err != nil {
		return result{}, fmt.Errorf("%s: %w", name, err)
	}
	defer eng.close()
	queue := make(chan request, 4*writers)
	stop := make(chan struct{})
	var commits int
	committerDone := make(chan struct{})
	go func() { // the group committer
		defer close(committerDone)
		var seq uint64 = 1
		for {
			var pending []request
			select {
			case r := <-queue:
				pending = append(pending, r)
			case <-stop:
				return
			}
		drain:
			for {
				select {
				case r := <-queue:
					pending = append(pending, r)
				default:
					break drain
				}
			}
			batch := make([][]byte, len(pending))
			for i, r := range pending {
				batch[i] = r.rec
			}
			err := eng.commit(batch, seq)
			seq += uint64(len(batch))
			commits++
			for _, r := range pending {
				r.done <- err
			}
		}
	}()
	var mu sync.Mutex
	var lat []time.Duration
	var wg sync.WaitGroup
	deadline := time.Now().Add(d)
	start := time.Now()
	var failed error
	for range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			done := make(chan error, 1)
			var mine []time.Duration
			for time.Now().Before(deadline) {
				t0 := time.Now()
				queue <- request{rec: record, done: done}
				if err := <-done; err != nil {
					mu.Lock()
					failed = err
					mu.Unlock()
					return
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(stop)
	<-committerDone
	if failed != nil {
		return result{}, fmt.Errorf("%s: %w", name, failed)
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(p float64) time.Duration { return lat[min(len(lat)-1, int(p*float64(len(lat))))] }
	return result{engine: name, writers: writers, appends: len(lat), commits: commits, seconds: elapsed.Seconds(), p50: pct(0.50), p99: pct(0.99)}, nil
}

func main() {
	seconds := flag.Int("seconds", 5, "duration of each run")
	writersFlag := flag.String("writers", "16,128", "concurrent writers of each run (comma-separated)")
	enginesFlag := flag.String("engines", "sqlite-current,sqlite-lean,bbolt,pebble", "engines to measure")
	flag.Parse()
	engines := map[string]func(string) (engine, error){
		"sqlite-current": func(d string) (engine, error) { return openSQLite(d, true) },
		"sqlite-lean":    func(d string) (engine, error) { return openSQLite(d, false) },
		"bbolt":          openBolt,
		"pebble":         openPebble,
	}
	// A ConnectionOpened as the log stores it: about 200 bytes of JSON.
	record := []byte(`{"type":"ConnectionOpened","userId":"user-000123","connectionId":"PXEyXdxwoAMCJzw=","at":"2026-11-27T08:00:00.123456789Z","sourceIp":"203.0.113.10","userAgent":"Mozilla/5.0 (X11; Linux x86_64)"}`)
	fmt.Println("| engine | writers | appends/s | commits/s | mean batch | p50 | p99 |")
	fmt.Println("|---|---|---|---|---|---|---|")
	for _, w := range strings.Split(*writersFlag, ",") {
		writers, err := strconv.Atoi(w)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bad --writers:", err)
			os.Exit(2)
		}
		for _, name := range strings.Split(*enginesFlag, ",") {
			open, ok := engines[name]
			if !ok {
				fmt.Fprintln(os.Stderr, "unknown engine", name)
				os.Exit(2)
			}
			r, err := run(name, open, writers, time.Duration(*seconds)*time.Second, record)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			fmt.Printf("| %s | %d | %.0f | %.0f | %.1f | %s | %s |\n", r.engine, r.writers, float64(r.appends)/r.seconds,
				float64(r.commits)/r.seconds, float64(r.appends)/float64(max(1, r.commits)), r.p50.Round(10*time.Microsecond), r.p99.Round(10*time.Microsecond))
		}
	}
}
