package bench

import (
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"time"
)

// GroupLog is the least a server does to answer only once a message is durable: the
// requests' bodies appended to one file in group commits, each one write and one fsync.
// A commit takes the first waiting request, holds for more (hold), takes every request
// that arrived meanwhile, writes them and syncs; requests arriving while it syncs wait for
// the next. No index, no outcome, no recovery: a floor, not a queue. The file starts over
// once past logWrap bytes, so it stays bounded over any run.
type GroupLog struct {
	f       *os.File
	hold    time.Duration
	reqs    chan *logAppend
	done    chan struct{} // closed by Close
	exited  chan struct{} // closed by run when it returns
	commits atomic.Int64
}

// Commits is how many group commits the log has made.
func (l *GroupLog) Commits() int64 { return l.commits.Load() }

// logWrap is the size at which GroupLog writes from the start of its file again.
const logWrap = 64 << 20

// ErrLogClosed answers the appends that find the log closed.
var ErrLogClosed = errors.New("log closed")

// logAppend is one request's body waiting for its commit; err receives its outcome.
type logAppend struct {
	data []byte
	err  chan error
}

// OpenGroupLog creates (or truncates) path and starts its committer, each commit held
// open for hold after its first request.
func OpenGroupLog(path string, hold time.Duration) (*GroupLog, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open log: %w", err)
	}
	l := &GroupLog{f: f, hold: hold, reqs: make(chan *logAppend, 4096),
		done: make(chan struct{}), exited: make(chan struct{})}
	go l.run()
	return l, nil
}

// Append returns once data is written and synced, with the commit's error if any
// (ErrLogClosed once the log is closed).
func (l *GroupLog) Append(data []byte) error {
	a := &logAppend{data: data, err: make(chan error, 1)}
	select {
	case l.reqs <- a:
	case <-l.done:
		return ErrLogClosed
	}
	select {
	case err := <-a.err:
		return err
	case <-l.exited:
		select {
		case err := <-a.err: // answered before the committer stopped
			return err
		default:
			return ErrLogClosed
		}
	}
}

// Close stops the committer once its commit in progress ends (appends still waiting get
// ErrLogClosed) and closes the file.
func (l *GroupLog) Close() {
	close(l.done)
	<-l.exited
	_ = l.f.Close()
}

func (l *GroupLog) run() {
	defer close(l.exited)
	defer func() {
		for {
			select {
			case a := <-l.reqs:
				a.err <- ErrLogClosed
			default:
				return
			}
		}
	}()
	var off int64
	var batch []*logAppend
	var buf []byte
	for {
		select {
		case a := <-l.reqs:
			batch = append(batch[:0], a)
		case <-l.done:
			return
		}
		if l.hold > 0 {
			time.Sleep(l.hold)
		}
	drain:
		for {
			select {
			case a := <-l.reqs:
				batch = append(batch, a)
			default:
				break drain
			}
		}
		buf = buf[:0]
		for _, a := range batch {
			buf = append(buf, a.data...)
			buf = append(buf, '\n')
		}
		if off+int64(len(buf)) > logWrap {
			off = 0
		}
		_, err := l.f.WriteAt(buf, off)
		if err == nil {
			err = l.f.Sync()
		}
		off += int64(len(buf))
		l.commits.Add(1)
		for _, a := range batch {
			a.err <- err
		}
	}
}
