// Package sqlite is the embedded event store of the local runtime: one SQLite file (pure Go,
// WAL) holding the connection log, the projector's checkpoint and view, the outbox of
// published events and the local message queue.
//
// Appends and enqueues from many goroutines are group-committed: one writer goroutine takes
// every request waiting, writes them in one transaction and answers each once it is durable.
// The projector reads the log past its checkpoint in sequence order (the change feed), folds
// it with the presence package, and writes the view, the outbox rows and the new checkpoint
// in one transaction, so a crash never leaves the view half-written and a restart resumes
// where the last commit ended. Every method of Store is safe for concurrent use.
package sqlite
