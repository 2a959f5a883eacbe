package bench

import (
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"time"
)

// groupLog is the least a server does to answer only once a message is durable: the
// requests' bodies appended to one file in group commits, each one write and one fsync.
// A commit takes the first waiting request, holds for more (hold), takes every request
// that arrived meanwhile, writes them and syncs; requests arriving while it syncs wait for
// the next. No index, no outcome, no recovery: a floor, not a queue. The file starts over
// once past logWrap bytes, so it stays bounded over any run.
type groupLog struct {
	f       *os.File
	hold    time.Duration
	reqs    chan *logAppend
	done    chan struct{} // closed by close
	exited  chan struct{} // closed by run when it returns
	commits atomic.Int64
}

// logWrap is the size at which groupLog writes from the start of its file again.
const logWrap = 64 << 20

// errLogClosed answers the appends that find the log closed.
var errLogClosed = errors.New("log closed")

// logAppend is one request's body waiting for its commit; err receives its outcome.
type logAppend struct {
	data []byte
	err  chan error
}

// openGroupLog creates (or truncates) path and starts its committer.
func openGroupLog(path string, hold time.Duration) (*groupLog, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open log: %w", err)
	}
	l := &groupLog{f: f, hold: hold, reqs: make(chan *logAppend, 4096),
		done: make(chan struct{}), exited: make(chan struct{})}
	go l.run()
	return l, nil
}

// append returns once data is written and synced, with the commit's error if any.
func (l *groupLog) append(data []byte) error {
	a := &logAppend{data: data, err: make(chan error, 1)}
	select {
	case l.reqs <- a:
	case <-l.done:
		return errLogClosed
	}
	select {
	case err := <-a.err:
		return err
	case <-l.exited:
		select {
		case err := <-a.err: // answered before the committer stopped
			return err
		default:
			return errLogClosed
		}
	}
}

// close stops the committer once its commit in progress ends (appends still waiting get
// errLogClosed) and closes the file.
func (l *groupLog) close() {
	close(l.done)
	<-l.exited
	_ = l.f.Close()
}

func (l *groupLog) run() {
	defer close(l.exited)
	defer func() {
		for {
			select {
			case a := <-l.reqs:
				a.err <- errLogClosed
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
