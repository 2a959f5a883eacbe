// Package dynamo is the DynamoDB adapter of the AWS runtime: the event table (the connection
// log, one item per event keyed by its natural key, written with a conditional put so a
// retried Lambda appends nothing twice) and the view table the projector keeps.
//
// The view holds, per user, one item (sk "#USER") whose string sets "live" and "closed" are
// the user's two-phase set of connections: an open adds to "live" only while the connection
// is not in "closed", a close moves it to "closed", both in one single-item update, so close
// wins whatever order the stream delivers records in and redelivery changes nothing. The
// announced state is changed by conditional updates only, and each transition names the
// record that caused it ("onlineBy", "offlineSince"), so a retried record republishes the
// same event id instead of losing it. One item per connection (sk "CONN#<id>") keeps its
// times for the sweeper. The attribute "online" exists only while the live set is non-empty:
// the sparse index "online" serves the online list. No call uses transactions.
//
// A Store is safe for concurrent use.
package dynamo
