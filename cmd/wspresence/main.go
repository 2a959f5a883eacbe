// Command wspresence runs the presence and message-delivery service locally on an embedded
// store, and talks to a running server: it mints user tokens, enqueues messages and reads
// who is online. Run `wspresence help` for the commands.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	execSteadyMonitor(os.Args)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}
