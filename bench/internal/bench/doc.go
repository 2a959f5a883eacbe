// Package bench measures the local runtime through its public interface only, against a
// baseline in the same run: a minimal WebSocket server (coder/websocket, no auth, no store)
// that accepts connections, pushes frames and answers an in-memory online list. Every
// headline figure is reported as wspresence / baseline, so the noise of a shared machine
// cancels out. The load is open loop (a fixed arrival rate), from a separate process.
package bench
