// TEST DOUBLE. This is not cloudflared: it is a stand-in for the cloudflared release binary,
// for tests only, because the real one cannot be downloaded where the tests run and a real
// tunnel needs Cloudflare's edge.
//
// The tests serve this program's build as `cloudflared-linux-<arch>` from a local HTTP server
// and build docker/cloudflared/Dockerfile against it (CLOUDFLARED_RELEASE_URL and the sha256
// build arguments), so the real Dockerfile, entrypoint and health check run unchanged.
//
// What it imitates, and nothing more:
//   - the command line the image's entrypoint uses:
//     `cloudflared tunnel --no-autoupdate --metrics ADDR --url ORIGIN`   (quick tunnel)
//     `cloudflared tunnel --no-autoupdate --metrics ADDR run`           (named; TUNNEL_TOKEN from the environment)
//     and `cloudflared version`;
//   - the log lines, including the quick tunnel's box with its https://<name>.trycloudflare.com URL;
//   - the metrics server: /ready ({"status","readyConnections","connectorId"}; 503 while no
//     connection is up), /quicktunnel ({"hostname"}; empty for a named tunnel), /metrics,
//     /healthcheck;
//   - the tunnel itself, reduced to a plain HTTP listener on port 8080 that the edge sends the
//     requests for the public hostname to; a quick tunnel proxies them to its --url origin;
//   - a named tunnel's configuration living with the tunnel, not with the connector: with a token,
//     --url and TUNNEL_URL are ignored (as cloudflared does for a remotely managed tunnel,
//     cloudflare/cloudflared#998) and the ingress rules come from the edge when the connector
//     registers; a request goes to the service of the first rule whose hostname matches (or that
//     has none), `http_status:NNN` answers NNN;
//   - graceful shutdown on SIGTERM/SIGINT: the connections are unregistered at once (/ready answers
//     503, and a named connector tells the edge, so it sends no new requests), requests in flight
//     are finished, then it exits 0; after --grace-period (default 30s) it exits even with
//     requests left.
//
// The token of a named tunnel is what Cloudflare hands out: base64 of {"a": account, "t": tunnel
// id, "s": secret}. Test-only: a token with "e", the URL of the stand-in edge (tests/fakes/edge.py),
// makes the connector register there (POST e/test-double/connectors with tunnel, secret,
// connector id and its ports; the answer carries the ingress rules) and unregister on shutdown.
// Without "e" (or a token that is not base64 JSON) the named connector registers with no one: it
// reports its connections after a moment and has no ingress (every request gets a 502).
//
// Test-only additions, which real cloudflared does not have:
//   - POST /test-double/connections?ready=N on the metrics server sets the number of ready
//     connections, so that tests can make the tunnel lose and regain the edge;
//   - TEST_DOUBLE_CONNECT_DELAY (a Go duration, default 300ms) is how long the connections take
//     to come up, so that tests can see a start before registration;
//   - requests from the stand-in edge name the connector they are meant for
//     (X-Test-Double-Connector); another connector at that address (a restarted container)
//     answers 421 with X-Test-Double-Wrong-Connector, which the edge treats as a failed connection;
//   - a token on the command line (--token) is refused with exit status 3, so that a test fails
//     if the image ever puts the secret where `ps` and `docker inspect` show it.
package main

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	version = "0.0.0-test-double"
	// The real quick tunnel opens one connection, a named tunnel four.
	quickConnections = 1
	namedConnections = 4
	// Long enough that /ready is seen answering 503 first, short enough not to slow tests
	// (TEST_DOUBLE_CONNECT_DELAY changes it).
	defaultConnectDelay = 300 * time.Millisecond
	// How long the edge takes to notice an unregistered connection, in this stand-in.
	unregisterDelay = 1 * time.Second
	// Cloudflare's edge refuses larger request bodies on the free plan.
	maxRequestBody = 100 << 20
)

type options struct {
	metrics     string
	origin      string
	named       bool
	gracePeriod time.Duration
}

func logf(level, format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "%s %s %s\n", time.Now().UTC().Format(time.RFC3339), level, fmt.Sprintf(format, args...))
}

func fail(code int, format string, args ...interface{}) {
	logf("ERR", format, args...)
	os.Exit(code)
}

// parseArgs reads `tunnel [flags] [run]` the way cloudflared's CLI does, flags as `--f v` or `--f=v`.
func parseArgs(args []string) (options, error) {
	opts := options{metrics: "127.0.0.1:20241", origin: os.Getenv("TUNNEL_URL"), gracePeriod: 30 * time.Second}
	if len(args) == 0 || args[0] != "tunnel" {
		return opts, fmt.Errorf("test double: want `tunnel ...` or `version`, got %q", args)
	}
	for i := 1; i < len(args); i++ {
		arg := args[i]
		name, value, hasValue := strings.Cut(strings.TrimLeft(arg, "-"), "=")
		next := func() (string, error) {
			if hasValue {
				return value, nil
			}
			if i+1 >= len(args) {
				return "", fmt.Errorf("flag --%s needs a value", name)
			}
			i++
			return args[i], nil
		}
		var err error
		switch {
		case arg == "run":
			opts.named = true
		case !strings.HasPrefix(arg, "-"):
			return opts, fmt.Errorf("test double: unexpected argument %q", arg)
		case name == "no-autoupdate":
		case name == "metrics":
			opts.metrics, err = next()
		case name == "url":
			opts.origin, err = next()
		case name == "grace-period":
			var text string
			if text, err = next(); err == nil {
				opts.gracePeriod, err = time.ParseDuration(text)
			}
		case name == "token":
			fail(3, "test double: the tunnel token was passed on the command line, where ps and docker inspect show it; "+
				"pass it as TUNNEL_TOKEN in the environment")
		default:
			return opts, fmt.Errorf("test double: flag provided but not imitated: %s", arg)
		}
		if err != nil {
			return opts, err
		}
	}
	return opts, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

func asciiBox(lines ...string) []string {
	width := 0
	for _, l := range lines {
		if len(l) > width {
			width = len(l)
		}
	}
	border := "+" + strings.Repeat("-", width+4) + "+"
	box := []string{border}
	for _, l := range lines {
		box = append(box, "|  "+l+strings.Repeat(" ", width-len(l))+"  |")
	}
	return append(box, border)
}

func writeJSON(w http.ResponseWriter, status int, v interface{}) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// tunnelToken is a named tunnel's token as Cloudflare issues it, plus the test double's edge.
type tunnelToken struct {
	Account string `json:"a"`
	Tunnel  string `json:"t"`
	Secret  string `json:"s"`
	Edge    string `json:"e"`
}

func parseToken(text string) (tunnelToken, bool) {
	var token tunnelToken
	text = strings.TrimSpace(text)
	for _, encoding := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		raw, err := encoding.DecodeString(text)
		if err == nil && json.Unmarshal(raw, &token) == nil && token.Tunnel != "" {
			return token, true
		}
	}
	return tunnelToken{}, false
}

// ingressRule is one rule of a named tunnel's configuration: requests for Hostname (any, when
// empty) go to Service, an http(s) URL or `http_status:NNN`.
type ingressRule struct {
	Hostname string `json:"hostname"`
	Service  string `json:"service"`
}

// ingress is the tunnel's configuration as the connector last received it.
type ingress struct {
	mu      sync.Mutex
	rules   []ingressRule
	proxies map[string]http.Handler
}

func (in *ingress) set(rules []ingressRule) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.rules = rules
	in.proxies = map[string]http.Handler{}
}

func (in *ingress) handler(host string) (http.Handler, error) {
	host = strings.ToLower(strings.Split(host, ":")[0])
	in.mu.Lock()
	defer in.mu.Unlock()
	for _, rule := range in.rules {
		if rule.Hostname != "" && !strings.EqualFold(rule.Hostname, host) {
			continue
		}
		if strings.HasPrefix(rule.Service, "http_status:") {
			status, err := strconv.Atoi(strings.TrimPrefix(rule.Service, "http_status:"))
			if err != nil {
				return nil, fmt.Errorf("bad ingress service %q", rule.Service)
			}
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				http.Error(w, http.StatusText(status), status)
			}), nil
		}
		if proxy, ok := in.proxies[rule.Service]; ok {
			return proxy, nil
		}
		origin, err := url.Parse(rule.Service)
		if err != nil || origin.Host == "" {
			return nil, fmt.Errorf("bad ingress service %q", rule.Service)
		}
		proxy := httputil.NewSingleHostReverseProxy(origin)
		in.proxies[rule.Service] = proxy
		return proxy, nil
	}
	return nil, errors.New("no ingress rule matches " + host)
}

// edgeClient talks to the stand-in edge for a named connector.
type edgeClient struct {
	token     tunnelToken
	connector string
	client    *http.Client
}

func (e *edgeClient) register() ([]ingressRule, error) {
	body, _ := json.Marshal(map[string]interface{}{
		"tunnel": e.token.Tunnel, "secret": e.token.Secret, "connector": e.connector,
		"port": edgePort, "metricsPort": metricsPort,
	})
	response, err := e.client.Post(strings.TrimRight(e.token.Edge, "/")+"/test-double/connectors", "application/json", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	defer response.Body.Close()
	if response.StatusCode != http.StatusOK {
		text, _ := io.ReadAll(io.LimitReader(response.Body, 500))
		return nil, fmt.Errorf("the edge refused the connector: %s %s", response.Status, bytes.TrimSpace(text))
	}
	var answer struct {
		Ingress []ingressRule `json:"ingress"`
	}
	if err := json.NewDecoder(response.Body).Decode(&answer); err != nil {
		return nil, fmt.Errorf("the edge's answer: %v", err)
	}
	return answer.Ingress, nil
}

func (e *edgeClient) unregister() {
	request, _ := http.NewRequest(http.MethodDelete, strings.TrimRight(e.token.Edge, "/")+"/test-double/connectors/"+e.connector, nil)
	response, err := e.client.Do(request)
	if err != nil {
		logf("WRN", "could not unregister from the edge: %v", err)
		return
	}
	response.Body.Close()
}

// The edge side's port, and the metrics server's (from --metrics): the edge reaches both.
const edgePort = 8080

var metricsPort = 20241

func main() {
	args := os.Args[1:]
	if len(args) > 0 && (args[0] == "version" || args[0] == "--version" || args[0] == "-v") {
		fmt.Printf("cloudflared version %s (test double)\n", version)
		return
	}
	opts, err := parseArgs(args)
	if err != nil {
		fail(2, "%v", err)
	}
	if _, port, err := net.SplitHostPort(opts.metrics); err == nil {
		if n, err := strconv.Atoi(port); err == nil {
			metricsPort = n
		}
	}
	connectDelay := defaultConnectDelay
	if text := os.Getenv("TEST_DOUBLE_CONNECT_DELAY"); text != "" {
		if connectDelay, err = time.ParseDuration(text); err != nil {
			fail(2, "test double: TEST_DOUBLE_CONNECT_DELAY: %v", err)
		}
	}

	var hostname string
	var edge *edgeClient
	wantConnections := quickConnections
	connectorID := randomHex(16)
	routes := &ingress{}
	if opts.named {
		raw := os.Getenv("TUNNEL_TOKEN")
		if raw == "" {
			fail(1, "\"cloudflared tunnel run\" requires a tunnel token (TUNNEL_TOKEN) in this test double")
		}
		wantConnections = namedConnections
		tunnelID := randomHex(16)
		if token, ok := parseToken(raw); ok {
			tunnelID = token.Tunnel
			if token.Edge != "" {
				edge = &edgeClient{token: token, connector: connectorID, client: &http.Client{Timeout: 5 * time.Second}}
			}
		}
		if opts.origin != "" {
			logf("WRN", "the tunnel's configuration is managed remotely: --url/TUNNEL_URL %s is ignored", opts.origin)
		}
		logf("INF", "Starting tunnel tunnelID=%s", tunnelID)
	} else {
		if opts.origin == "" {
			fail(1, "a quick tunnel needs --url or TUNNEL_URL")
		}
		logf("INF", "Thank you for trying Cloudflare Tunnel. Doing so, without a Cloudflare account, is a quick way "+
			"to experiment and try it out. (This is a test double; see https://www.cloudflare.com/website-terms/ "+
			"for the real service's terms.)")
		logf("INF", "Requesting new quick Tunnel on trycloudflare.com...")
		hostname = "test-double-" + randomHex(4) + ".trycloudflare.com"
		for _, line := range asciiBox(
			"Your quick Tunnel has been created! Visit it at (it may take some time to be reachable):",
			"https://"+hostname,
		) {
			logf("INF", "%s", line)
		}
		routes.set([]ingressRule{{Service: opts.origin}})
	}
	logf("INF", "Version %s (test double)", version)

	var ready atomic.Int32
	metrics := http.NewServeMux()
	metrics.HandleFunc("/ready", func(w http.ResponseWriter, r *http.Request) {
		n := int(ready.Load())
		status := http.StatusOK
		if n == 0 {
			status = http.StatusServiceUnavailable
		}
		writeJSON(w, status, map[string]interface{}{"status": status, "readyConnections": n, "connectorId": connectorID})
	})
	metrics.HandleFunc("/quicktunnel", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"hostname": hostname})
	})
	metrics.HandleFunc("/healthcheck", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "OK\n")
	})
	metrics.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		fmt.Fprintf(w, "# HELP cloudflared_tunnel_ha_connections Number of active ha connections\n"+
			"# TYPE cloudflared_tunnel_ha_connections gauge\ncloudflared_tunnel_ha_connections %d\n"+
			"# HELP build_info Build and version information\n# TYPE build_info gauge\n"+
			"build_info{goversion=\"test-double\",revision=\"test-double\",version=%q} 1\n", ready.Load(), version)
	})
	metrics.HandleFunc("/test-double/connections", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.Atoi(r.URL.Query().Get("ready"))
		if r.Method != http.MethodPost || err != nil || n < 0 {
			http.Error(w, "POST /test-double/connections?ready=N with N >= 0", http.StatusBadRequest)
			return
		}
		ready.Store(int32(n))
		logf("INF", "test double: readyConnections set to %d", n)
		writeJSON(w, http.StatusOK, map[string]int{"readyConnections": n})
	})
	go func() {
		err := http.ListenAndServe(opts.metrics, metrics)
		fail(1, "failed to serve metrics on %s: %v", opts.metrics, err)
	}()
	logf("INF", "Starting metrics server on %s/metrics", opts.metrics)

	var inFlight atomic.Int64
	counted := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if want := r.Header.Get("X-Test-Double-Connector"); want != "" && want != connectorID {
			// A request meant for another connector: the one the edge knew at this address is gone.
			w.Header().Set("X-Test-Double-Wrong-Connector", connectorID)
			http.Error(w, "test double: not the connector this request was sent to", http.StatusMisdirectedRequest)
			return
		}
		r.Header.Del("X-Test-Double-Connector")
		inFlight.Add(1)
		defer inFlight.Add(-1)
		// Read the request body before proxying. Go's HTTP/1 server closes an inbound body once the
		// response starts, and the transport reads the body once more after copying it; when the
		// origin answers first (a streaming server does), that late read fails and the transport
		// drops the connection, cutting the answer after its headers (golang/go#40747).
		if r.Body != nil && r.ContentLength != 0 {
			body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxRequestBody))
			if err != nil {
				status := http.StatusBadRequest
				var tooLarge *http.MaxBytesError
				if errors.As(err, &tooLarge) {
					status = http.StatusRequestEntityTooLarge
				}
				http.Error(w, "test double: cannot read the request body: "+err.Error(), status)
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
			r.ContentLength = int64(len(body))
			r.TransferEncoding = nil
		}
		handler, err := routes.handler(r.Host)
		if err != nil {
			http.Error(w, "test double: "+err.Error(), http.StatusBadGateway)
			return
		}
		handler.ServeHTTP(w, r)
	})
	go func() {
		err := http.ListenAndServe(fmt.Sprintf("0.0.0.0:%d", edgePort), counted)
		fail(1, "test double: failed to serve the edge side on port %d: %v", edgePort, err)
	}()

	go func() {
		time.Sleep(connectDelay)
		if edge != nil {
			for {
				rules, err := edge.register()
				if err == nil {
					routes.set(rules)
					encoded, _ := json.Marshal(map[string]interface{}{"ingress": rules})
					logf("INF", "Updated to new configuration config=%s version=1", encoded)
					break
				}
				logf("ERR", "Register tunnel error from server side: %v; retrying in 1s", err)
				time.Sleep(time.Second)
			}
		}
		for i := 0; i < wantConnections; i++ {
			logf("INF", "Registered tunnel connection connIndex=%d connection=%s event=0 ip=192.0.2.%d location=test-double protocol=quic",
				i, randomHex(16), i+1)
		}
		ready.Store(int32(wantConnections))
	}()

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	sig := <-signals
	logf("INF", "Initiating graceful shutdown due to signal %s ...", sig)
	ready.Store(0)
	if edge != nil {
		edge.unregister()
	}
	logf("INF", "Unregistered tunnel connection connIndex=0 event=0")
	// The edge needs a moment to stop sending new requests; then wait for those in flight.
	deadline := time.Now().Add(opts.gracePeriod)
	time.Sleep(unregisterDelay)
	for inFlight.Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if n := inFlight.Load(); n > 0 {
		logf("WRN", "grace period over with %d requests in flight", n)
	}
	logf("INF", "Tunnel server stopped")
}
