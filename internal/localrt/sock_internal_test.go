package localrt

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/wspresence/wspresence/internal/delivery"
)

// socketPair returns a connected TCP pair, the client side with a receive buffer of
// 256 KB (far smaller ones stall loopback TCP in zero-window probes):
// a client reading nothing leaves a few MB at most in the kernel.
func socketPair(t *testing.T) (server *net.TCPConn, client *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	d := net.Dialer{}
	cc, err := d.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	client, server = cc.(*net.TCPConn), sc.(*net.TCPConn)
	_ = client.SetReadBuffer(256 << 10)
	t.Cleanup(func() { client.Close(); server.Close() })
	return server, client
}

// counted is a frame whose receipts are counted (its message never completes).
func counted() (frame, *inFlight) {
	p := &inFlight{remaining: 1 << 30}
	return frame{p: p}, p
}

func receipts(p *inFlight) (written, gone int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.written, (1 << 30) - p.remaining - p.written
}

// TestSockWriterNeverWaitsOnTheSocket: writes to a client that reads nothing return at
// once, whatever the socket does not take waiting in order; a frame is reported written
// only once its bytes are on the socket, and once the client reads, every byte arrives in
// order and every frame is reported written.
func TestSockWriterNeverWaitsOnTheSocket(t *testing.T) {
	server, client := socketPair(t)
	w := newSockWriter(&quietConn{Conn: server}, time.Minute, func() { t.Error("failed") })
	if w == nil {
		t.Fatal("no raw socket")
	}
	f, p := counted()
	const frames, size = 400, 64 << 10 // 25 MB: far more than the kernel holds
	var want bytes.Buffer
	for i := range frames {
		data := bytes.Repeat([]byte{byte('a' + i%26)}, size)
		want.Write(data)
		if n, err := w.Write(data); n != size || err != nil {
			t.Fatalf("write %d: %d, %v", i, n, err)
		}
		w.after(f)
	}
	if written, _ := receipts(p); written == frames {
		t.Fatalf("all %d frames reported written while the client has read nothing", frames)
	}
	if w.backlog() == 0 {
		t.Fatal("nothing waits for the socket")
	}
	got := make([]byte, want.Len())
	_ = client.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.ReadFull(client, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want.Bytes()) {
		t.Fatal("the bytes arrived out of order or altered")
	}
	if err := w.waitSent(context.Background()); err != nil {
		t.Fatal(err)
	}
	if written, gone := receipts(p); written != frames || gone != 0 {
		t.Fatalf("%d written, %d gone; want %d written", written, gone, frames)
	}
	w.flusher.Wait()
	w.mu.Lock()
	kept := cap(w.spill)
	w.mu.Unlock()
	if kept != 0 {
		t.Fatalf("the writer keeps %d bytes of buffer once the flusher is done", kept)
	}
	w.stop()
}

// TestSockWriterTimesOutASlowClient: a client that reads nothing has its connection failed
// once a write has waited for the timeout; the frames still waiting are reported gone,
// never written, and later writes fail.
func TestSockWriterTimesOutASlowClient(t *testing.T) {
	server, _ := socketPair(t)
	failed := make(chan struct{})
	w := newSockWriter(server, 100*time.Millisecond, func() { close(failed) })
	f, p := counted()
	data := bytes.Repeat([]byte("x"), 64<<10)
	sent := 0 // the frames accepted before the timeout (a loaded machine may be slow)
	for ; sent < 400; sent++ {
		if _, err := w.Write(data); err != nil {
			break
		}
		w.after(f)
	}
	<-failed
	written, gone := receipts(p)
	if gone == 0 || written+gone != sent {
		t.Fatalf("%d written, %d gone of %d", written, gone, sent)
	}
	if _, err := w.Write(data); err == nil {
		t.Fatal("a write after the failure succeeded")
	}
	if err := w.waitSent(context.Background()); err == nil {
		t.Fatal("waitSent after the failure succeeded")
	}
	w.after(f)
	if _, g := receipts(p); g != gone+1 {
		t.Fatal("a frame after the failure was not reported gone")
	}
	w.stop()
}

// TestSockWriterStopReportsWaitingFramesGone: frames still waiting when the connection
// ends are reported gone (as delivery.ErrConnectionGone), and the ending is not taken for
// a failure.
func TestSockWriterStopReportsWaitingFramesGone(t *testing.T) {
	server, _ := socketPair(t)
	w := newSockWriter(server, time.Minute, func() { t.Error("an ending connection was failed") })
	data := bytes.Repeat([]byte("x"), 64<<10)
	var errs []error
	done := make(chan struct{})
	for range 400 {
		if _, err := w.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	go func() {
		defer close(done)
		errs = append(errs, w.waitSent(context.Background()))
	}()
	for w.backlog() == 0 {
		time.Sleep(time.Millisecond)
	}
	w.close()
	server.Close()
	w.stop()
	<-done
	if len(errs) != 1 || !errors.Is(errs[0], delivery.ErrConnectionGone) && errs[0] == nil {
		t.Fatalf("waitSent after the end: %v", errs)
	}
}

// TestSockWriterDeadlineDoesNotOutliveTheFlusher: once the flusher has written what waited,
// a write made after its deadline would have passed goes to the socket as before.
func TestSockWriterDeadlineDoesNotOutliveTheFlusher(t *testing.T) {
	server, client := socketPair(t)
	w := newSockWriter(server, 500*time.Millisecond, func() { t.Error("failed") })
	data := bytes.Repeat([]byte("x"), 64<<10)
	f, _ := counted()
	total := 0
	for w.backlog() == 0 { // until the socket is full and the flusher runs
		if _, err := w.Write(data); err != nil {
			t.Fatal(err)
		}
		total += len(data)
		w.after(f)
	}
	// The client reads everything, the flusher ends within its deadline.
	_ = client.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.ReadFull(client, make([]byte, total)); err != nil {
		t.Fatal(err)
	}
	if err := w.waitSent(context.Background()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(700 * time.Millisecond) // past the flusher's last deadline
	if _, err := w.Write([]byte("after")); err != nil {
		t.Fatalf("a write after the flusher's deadline: %v", err)
	}
	got := make([]byte, 5)
	if _, err := io.ReadFull(client, got); err != nil || string(got) != "after" {
		t.Fatalf("read %q, %v", got, err)
	}
	w.stop()
}

// TestSockWriterKeepsNoBodyOfAWaitingFrame: a frame waiting for the flusher keeps its
// receipt only; its bytes are in the spill, and the body (shared with the user's other
// connections) is not held a second time by a slow reader.
func TestSockWriterKeepsNoBodyOfAWaitingFrame(t *testing.T) {
	server, _ := socketPair(t)
	w := newSockWriter(&quietConn{Conn: server}, time.Minute, func() {})
	if w == nil {
		t.Fatal("no raw socket")
	}
	defer func() { w.close(); server.Close(); w.stop() }() // the flusher's write fails at once
	p := &inFlight{remaining: 1 << 30}
	for range 200 { // 12.8 MB to a client reading nothing
		data := bytes.Repeat([]byte{'x'}, 64<<10)
		if _, err := w.Write(data); err != nil {
			t.Fatal(err)
		}
		w.after(frame{data: data, p: p})
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.waiting) == 0 {
		t.Fatal("no frame waits for the socket")
	}
	for i, sf := range w.waiting {
		if sf.f.data != nil {
			t.Fatalf("waiting frame %d holds its %d-byte body", i, len(sf.f.data))
		}
	}
}
