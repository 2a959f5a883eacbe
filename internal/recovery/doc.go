// Package recovery is the missed-message recovery protocol both runtimes speak to clients
// that opt in with the WebSocket subprotocol wspresence.v1: the frames (a message with its
// position in the user's stream, the answer to a recover request, an error), the parsing of
// a client's recover request, the decision of what a recover gets (a replay or a
// discontinuity and its reason), and the close codes of a refused opted-in client. The
// runtimes keep the streams and move the bytes; this package decides. Everything here is
// safe for concurrent use.
package recovery
