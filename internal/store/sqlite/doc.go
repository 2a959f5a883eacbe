// Package sqlite is the embedded store of the local runtime: one SQLite file (pure Go, WAL)
// holding the connection log, the outbox of published events, the local message queue and
// the snapshot of the view, and the view itself as a memory image of the log.
//
// Writes from many goroutines are group-committed: one writer goroutine takes every request
// waiting and writes it in one transaction, one record per fact (a connection event or a
// grace decision in the log, an accepted message in the queue), answering each once it is
// durable. The same writer folds each new record over the image with the presence package,
// in log order, and writes the events the fold publishes to the outbox in the same
// transaction; the folded rows reach the image only once the commit is durable, so readers
// never see a state the log does not hold. The image's changed rows are snapshotted between
// commits, so a start replays only the log past the last snapshot. Every method of Store is
// safe for concurrent use.
package sqlite
