// Command sidecar is the entrypoint and the health check of the cloudflared image. The image has
// no shell, so the choice between a quick and a named tunnel is made here, from the environment,
// before cloudflared replaces this process.
//
//	sidecar          start cloudflared: a named tunnel when TUNNEL_TOKEN is set, otherwise a
//	                 quick tunnel to the origin in TUNNEL_URL
//	sidecar health   exit 0 when cloudflared's /ready answers 200, i.e. it holds at least one
//	                 connection to Cloudflare's edge
//	sidecar ARGS...  run `cloudflared ARGS...` unchanged (e.g. `version`)
//
// It deliberately avoids net/http: the whole image besides cloudflared must stay within 3 MB.
package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"time"
)

const (
	cloudflaredPath = "/usr/local/bin/cloudflared"
	// Fixed so that health checks, the health monitor and `slimllm tunnel url` know where to look.
	metricsListen = "0.0.0.0:20241"
	metricsLocal  = "127.0.0.1:20241"
)

func cloudflaredArgs(args []string, getenv func(string) string) ([]string, error) {
	if len(args) > 0 {
		return args, nil
	}
	common := []string{"tunnel", "--no-autoupdate", "--metrics", metricsListen}
	if getenv("TUNNEL_TOKEN") != "" {
		// `tunnel run` reads TUNNEL_TOKEN from the environment by itself. On the command line the
		// token would show in `ps`, `docker top` and `docker inspect`.
		return append(common, "run"), nil
	}
	origin := getenv("TUNNEL_URL")
	if origin == "" {
		return nil, errors.New("set TUNNEL_URL to the origin to publish (e.g. http://server:8080) " +
			"for a quick tunnel, or TUNNEL_TOKEN for a named tunnel")
	}
	if !strings.HasPrefix(origin, "http://") && !strings.HasPrefix(origin, "https://") {
		return nil, fmt.Errorf("TUNNEL_URL %q: want an http:// or https:// URL of the origin", origin)
	}
	return append(common, "--url", origin), nil
}

// health asks cloudflared's /ready with a bare HTTP/1.0 request.
func health() int {
	conn, err := net.DialTimeout("tcp", metricsLocal, 2*time.Second)
	if err != nil {
		fmt.Printf("cloudflared's metrics server does not answer: %v\n", err)
		return 1
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := fmt.Fprintf(conn, "GET /ready HTTP/1.0\r\nHost: %s\r\n\r\n", metricsLocal); err != nil {
		fmt.Printf("asking /ready: %v\n", err)
		return 1
	}
	answer, err := io.ReadAll(io.LimitReader(conn, 8192))
	if err != nil && len(answer) == 0 {
		fmt.Printf("reading /ready: %v\n", err)
		return 1
	}
	statusLine, rest, _ := bytes.Cut(answer, []byte("\r\n"))
	_, body, _ := bytes.Cut(rest, []byte("\r\n\r\n"))
	// Docker keeps this output in `docker inspect`: the body says how many connections are ready.
	fmt.Printf("%s %s\n", statusLine, bytes.TrimSpace(body))
	fields := strings.Fields(string(statusLine))
	if len(fields) >= 2 && fields[1] == "200" {
		return 0
	}
	return 1
}

func main() {
	args := os.Args[1:]
	if len(args) == 1 && args[0] == "health" {
		os.Exit(health())
	}
	argv, err := cloudflaredArgs(args, os.Getenv)
	if err != nil {
		fmt.Fprintf(os.Stderr, "sidecar: error: %v\n", err)
		os.Exit(2)
	}
	// exec, not a child process: cloudflared becomes PID 1 and gets Docker's signals directly.
	err = syscall.Exec(cloudflaredPath, append([]string{"cloudflared"}, argv...), os.Environ())
	fmt.Fprintf(os.Stderr, "sidecar: error: cannot start %s: %v\n", cloudflaredPath, err)
	os.Exit(1)
}
