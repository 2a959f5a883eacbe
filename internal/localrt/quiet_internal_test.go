package localrt

import (
	"io"
	"net"
	"testing"
	"time"
)

// TestQuietConnReadsNothingWhileQuiet: while quiet, a one-byte read (net/http's read for a
// client hanging up) returns at once and takes nothing from the socket; the bytes are there
// for the next read, and once quiet is cleared a one-byte read reads again.
func TestQuietConnReadsNothingWhileQuiet(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	accepted, err := quietListener{ln}.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer accepted.Close()
	qc := accepted.(*quietConn)
	_ = qc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := client.Write([]byte("abc")); err != nil {
		t.Fatal(err)
	}
	qc.quiet.Store(true)
	one := make([]byte, 1)
	if n, err := qc.Read(one); n != 0 || err != nil {
		t.Fatalf("quiet one-byte read: %d, %v", n, err)
	}
	two := make([]byte, 2)
	if _, err := io.ReadFull(qc, two); err != nil || string(two) != "ab" {
		t.Fatalf("read %q, %v; want \"ab\"", two, err)
	}
	qc.quiet.Store(false)
	if n, err := qc.Read(one); n != 1 || err != nil || one[0] != 'c' {
		t.Fatalf("one-byte read once not quiet: %d %q, %v", n, one, err)
	}
}
