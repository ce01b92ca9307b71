// TEST DOUBLE. A stand-in for the service a tunnel publishes and the health monitor watches (the
// inference server), for tests only: a static binary that fits on scratch and starts at once.
//
//	GET /health   200 {"status":"ok"}, the shape of llama.cpp's server health endpoint
//	any other     200 {"origin":"test-double","path":PATH}, so a test can see a request arrive
//
// It listens on :8080.
package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
)

func main() {
	http.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]string{"status": "ok"})
	})
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]string{"origin": "test-double", "path": r.URL.Path})
	})
	err := http.ListenAndServe(":8080", nil)
	fmt.Fprintf(os.Stderr, "origin test double: %v\n", err)
	os.Exit(1)
}
