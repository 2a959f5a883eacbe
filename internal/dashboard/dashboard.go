// Package dashboard is the live dashboard of the local runtime, served at /ui/: who is
// online (paginated), the live feed of published events, a form to send a message, a
// search for users' status, and a panel that connects as a user with the client library.
// It is static files embedded in the binary; static/wspresence/ is a copy of the build of
// the repository's client/ (`npm run build && npm run dashboard` there; CI checks that it
// is current). The page calls the backend endpoints with the API key the operator gives
// it, which it keeps in the tab's session storage only. Handler is safe for concurrent use.
package dashboard

import (
	"embed"
	"io/fs"
	"net/http"
)

//go:embed static
var static embed.FS

// Favicon serves the dashboard's icon, for the browsers that ask for /favicon.ico.
func Favicon() http.Handler {
	icon, err := static.ReadFile("static/favicon.ico")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "image/x-icon")
		w.Header().Set("Cache-Control", "public, max-age=86400")
		_, _ = w.Write(icon)
	})
}

// Handler serves the dashboard's files; mount it under prefix (e.g. "/ui/").
func Handler(prefix string) http.Handler {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	files := http.StripPrefix(prefix, http.FileServer(http.FS(sub)))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Security-Policy", "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; style-src 'self'; script-src 'self'")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Referrer-Policy", "no-referrer")
		w.Header().Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	})
}
