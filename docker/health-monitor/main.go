// Command health-monitor probes HTTP endpoints of other containers every interval, prints one
// line per round (text for people, JSON lines for machines), keeps the overall state in a file
// that `health-monitor -check` (the image's HEALTHCHECK) reads, and posts to an optional webhook
// whenever a target changes state. It sees the other services only through the network.
//
// Options and their environment variables are documented in README.md.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode"
)

const (
	stateUp      = "UP"
	stateDown    = "DOWN"
	stateUnknown = "UNKNOWN"

	// Health endpoints answer with a few bytes; a cap keeps a misbehaving target from costing memory.
	maxBody = 64 << 10

	exitUsage = 2
)

var targetName = regexp.MustCompile(`^[A-Za-z0-9_.-]+$`)

type target struct {
	Name string
	URL  string
}

type config struct {
	targets   []target
	interval  time.Duration
	timeout   time.Duration
	failures  int
	format    string
	webhook   string
	stateFile string
	once      bool
	check     bool
}

const usageText = `usage: health-monitor [options]        probe targets every interval
       health-monitor -once [options]  one round; exit 0 when every target is UP
       health-monitor -check           exit 0 when the running monitor's last state is UP

Each option falls back to the environment variable shown, then to the default.
`

func parseConfig(args []string, getenv func(string) string) (*config, error) {
	fs := flag.NewFlagSet("health-monitor", flag.ContinueOnError)
	fs.SetOutput(os.Stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usageText)
		fs.PrintDefaults()
	}
	env := func(name, fallback string) string {
		if v := getenv(name); v != "" {
			return v
		}
		return fallback
	}
	targets := fs.String("targets", env("MONITOR_TARGETS", ""),
		"targets as `name=url` separated by commas or spaces (MONITOR_TARGETS)")
	interval := fs.String("interval", env("MONITOR_INTERVAL", "10s"),
		"time between the starts of two rounds, e.g. 10s or 0.5 (MONITOR_INTERVAL)")
	timeout := fs.String("timeout", env("MONITOR_TIMEOUT", "3s"),
		"time one probe may take; shorter than the interval (MONITOR_TIMEOUT)")
	failures := fs.String("failures", env("MONITOR_FAILURES", "1"),
		"consecutive failed probes before a target is DOWN (MONITOR_FAILURES)")
	format := fs.String("format", env("MONITOR_FORMAT", "text"),
		"output: text (one line per round) or json (one JSON object per round) (MONITOR_FORMAT)")
	webhook := fs.String("webhook", env("MONITOR_WEBHOOK_URL", ""),
		"URL that receives a JSON POST when a target changes state (MONITOR_WEBHOOK_URL)")
	stateFile := fs.String("state-file", env("MONITOR_STATE_FILE", "/run/health-monitor/state.json"),
		"where the last round is kept for -check (MONITOR_STATE_FILE)")
	once := fs.Bool("once", false, "run one round, print it and exit: 0 when all targets are UP, 1 otherwise")
	check := fs.Bool("check", false, "read the state file: exit 0 when UP and fresh, 1 otherwise")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q (options start with -)", fs.Arg(0))
	}

	cfg := &config{stateFile: *stateFile, once: *once, check: *check}
	if cfg.check {
		if cfg.once {
			return nil, errors.New("-check and -once exclude each other")
		}
		if cfg.stateFile == "" {
			return nil, errors.New("-check needs a state file (-state-file or MONITOR_STATE_FILE)")
		}
		// -check runs inside the monitor's container with the same environment; it reads only the file.
		return cfg, nil
	}

	var err error
	if cfg.targets, err = parseTargets(*targets); err != nil {
		return nil, err
	}
	if cfg.interval, err = parseDuration("interval", *interval); err != nil {
		return nil, err
	}
	if cfg.timeout, err = parseDuration("timeout", *timeout); err != nil {
		return nil, err
	}
	if cfg.timeout >= cfg.interval {
		return nil, fmt.Errorf("timeout %s must be shorter than interval %s, so that a round ends before the next one starts",
			cfg.timeout, cfg.interval)
	}
	n, err := strconv.Atoi(strings.TrimSpace(*failures))
	if err != nil || n < 1 {
		return nil, fmt.Errorf("failures %q (-failures or MONITOR_FAILURES): want a whole number >= 1", *failures)
	}
	cfg.failures = n
	switch *format {
	case "text", "json":
		cfg.format = *format
	default:
		return nil, fmt.Errorf("format %q (-format or MONITOR_FORMAT): want text or json", *format)
	}
	if *webhook != "" {
		if err := checkURL(*webhook); err != nil {
			return nil, fmt.Errorf("webhook %q (-webhook or MONITOR_WEBHOOK_URL): %v", *webhook, err)
		}
		cfg.webhook = *webhook
	}
	return cfg, nil
}

func parseTargets(spec string) ([]target, error) {
	fields := strings.FieldsFunc(spec, func(r rune) bool { return r == ',' || unicode.IsSpace(r) })
	if len(fields) == 0 {
		return nil, errors.New("no targets: set -targets or MONITOR_TARGETS to name=url[,name=url...]")
	}
	seen := map[string]bool{}
	targets := make([]target, 0, len(fields))
	for _, field := range fields {
		name, rawURL, found := strings.Cut(field, "=")
		if !found || name == "" || rawURL == "" {
			return nil, fmt.Errorf("target %q: want name=url, e.g. server=http://server:8080/health", field)
		}
		if !targetName.MatchString(name) {
			return nil, fmt.Errorf("target %q: the name may only hold letters, digits, '.', '_' and '-'", field)
		}
		if seen[name] {
			return nil, fmt.Errorf("target name %q is given twice", name)
		}
		if err := checkURL(rawURL); err != nil {
			return nil, fmt.Errorf("target %q: %v", field, err)
		}
		seen[name] = true
		targets = append(targets, target{Name: name, URL: rawURL})
	}
	return targets, nil
}

func checkURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("not a URL (%v)", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return errors.New("want an http:// or https:// URL")
	}
	if u.Host == "" {
		return errors.New("the URL has no host")
	}
	return nil
}

// parseDuration takes Go durations ("10s", "500ms") and, for environment variables written by
// hand, plain seconds ("10", "0.5").
func parseDuration(name, raw string) (time.Duration, error) {
	raw = strings.TrimSpace(raw)
	d, err := time.ParseDuration(raw)
	if err != nil {
		seconds, ferr := strconv.ParseFloat(raw, 64)
		if ferr != nil {
			return 0, fmt.Errorf("%s %q (-%s or MONITOR_%s): want a duration like 10s, 500ms or 2.5",
				name, raw, name, strings.ToUpper(name))
		}
		d = time.Duration(seconds * float64(time.Second))
	}
	if d <= 0 {
		return 0, fmt.Errorf("%s %q (-%s or MONITOR_%s): must be more than zero", name, raw, name, strings.ToUpper(name))
	}
	return d, nil
}

// probeResult is one probe of one target.
type probeResult struct {
	ok      bool
	detail  string
	latency time.Duration
}

// Values of a JSON "status" field that mean healthy, as servers commonly spell them.
var healthyStatus = map[string]bool{"ok": true, "up": true, "healthy": true, "pass": true, "ready": true, "serving": true}

func probe(ctx context.Context, client *http.Client, t target) probeResult {
	start := time.Now()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, t.URL, nil)
	if err != nil {
		return probeResult{detail: err.Error()}
	}
	req.Header.Set("User-Agent", "slimllm-health-monitor")
	req.Header.Set("Accept", "application/json, */*")
	resp, err := client.Do(req)
	if err != nil {
		return probeResult{detail: describeError(err), latency: time.Since(start)}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	latency := time.Since(start)
	if err != nil {
		return probeResult{detail: "reading the answer: " + describeError(err), latency: latency}
	}
	ok, detail := judge(resp.StatusCode, body)
	return probeResult{ok: ok, detail: detail, latency: latency}
}

// judge decides health from the HTTP status and, when the body is a JSON object, from its
// cloudflared `readyConnections` count and its `status` field.
func judge(status int, body []byte) (bool, string) {
	ok := status >= 200 && status < 300
	parts := []string{fmt.Sprintf("HTTP %d", status)}
	var doc map[string]interface{}
	if json.Unmarshal(body, &doc) == nil {
		if n, found := doc["readyConnections"].(float64); found {
			parts = append(parts, fmt.Sprintf("readyConnections=%d", int(n)))
			ok = ok && n >= 1
		}
		switch s := doc["status"].(type) {
		case string:
			parts = append(parts, "status="+s)
			ok = ok && healthyStatus[strings.ToLower(s)]
		case float64:
			ok = ok && s >= 200 && s < 300
		}
	}
	return ok, strings.Join(parts, ", ")
}

func describeError(err error) string {
	var uerr *url.Error
	if errors.As(err, &uerr) {
		err = uerr.Err
	}
	var dnsErr *net.DNSError
	switch {
	case errors.Is(err, context.DeadlineExceeded) || os.IsTimeout(err):
		return "timed out"
	case errors.As(err, &dnsErr):
		return "cannot resolve " + dnsErr.Name
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.Is(err, syscall.EHOSTUNREACH):
		return "host unreachable"
	}
	return err.Error()
}

// targetState is what the monitor remembers about one target between rounds.
type targetState struct {
	target
	state    string
	failures int // consecutive failed probes
}

type targetReport struct {
	Name      string `json:"name"`
	URL       string `json:"url"`
	State     string `json:"state"`
	Previous  string `json:"previous"`
	Changed   bool   `json:"changed"`
	OK        bool   `json:"ok"`
	Detail    string `json:"detail"`
	LatencyMS int64  `json:"latency_ms"`
	Failures  int    `json:"failures"`
}

type report struct {
	Time    time.Time      `json:"time"`
	State   string         `json:"state"`
	Changed bool           `json:"changed"`
	Targets []targetReport `json:"targets"`
}

// stateRecord is the state file: the last round, and the moment after which -check treats it as
// left behind by a monitor that stopped probing.
type stateRecord struct {
	report
	Line       string    `json:"line"`
	StaleAfter time.Time `json:"stale_after"`
}

type monitor struct {
	cfg    *config
	client *http.Client
	states []*targetState
	last   string
}

func newMonitor(cfg *config) *monitor {
	m := &monitor{
		cfg: cfg,
		client: &http.Client{
			Timeout: cfg.timeout,
			// A fresh connection and a fresh DNS lookup per probe: a reused connection or address
			// would hide a container that was replaced, and an HTTP proxy from the environment
			// has no business between containers on one network.
			Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil},
			// A health endpoint that redirects is reported as such, not followed.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		last: stateUnknown,
	}
	for _, t := range cfg.targets {
		m.states = append(m.states, &targetState{target: t, state: stateUnknown})
	}
	return m
}

// round probes every target at once and returns when all have answered or timed out.
func (m *monitor) round(ctx context.Context) report {
	results := make([]probeResult, len(m.states))
	var wg sync.WaitGroup
	for i, st := range m.states {
		wg.Add(1)
		go func(i int, t target) {
			defer wg.Done()
			pctx, cancel := context.WithTimeout(ctx, m.cfg.timeout)
			defer cancel()
			results[i] = probe(pctx, m.client, t)
		}(i, st.target)
	}
	wg.Wait()

	rep := report{Time: time.Now().UTC()}
	for i, st := range m.states {
		res := results[i]
		previous := st.state
		if res.ok {
			st.failures = 0
			st.state = stateUp
		} else {
			st.failures++
			if st.failures >= m.cfg.failures {
				st.state = stateDown
			}
		}
		changed := st.state != previous
		rep.Changed = rep.Changed || changed
		rep.Targets = append(rep.Targets, targetReport{
			Name: st.Name, URL: st.URL, State: st.state, Previous: previous, Changed: changed,
			OK: res.ok, Detail: res.detail, LatencyMS: res.latency.Milliseconds(), Failures: st.failures,
		})
	}
	rep.State = overall(rep.Targets)
	return rep
}

func overall(targets []targetReport) string {
	state := stateUp
	for _, t := range targets {
		switch t.State {
		case stateDown:
			return stateDown
		case stateUnknown:
			state = stateUnknown
		}
	}
	return state
}

func (m *monitor) textLine(rep report) string {
	var b strings.Builder
	b.WriteString(rep.Time.Format("2006-01-02T15:04:05.000Z07:00"))
	b.WriteString(" ")
	b.WriteString(rep.State)
	for _, t := range rep.Targets {
		detail := t.Detail
		if t.OK {
			detail = fmt.Sprintf("%s, %dms", detail, t.LatencyMS)
		} else if t.State != stateDown {
			detail = fmt.Sprintf("failing %d/%d: %s", t.Failures, m.cfg.failures, detail)
		}
		fmt.Fprintf(&b, " %s=%s(%s)", t.Name, t.State, detail)
	}
	return b.String()
}

func (m *monitor) print(out io.Writer, rep report, line string) {
	if m.cfg.format == "json" {
		data, _ := json.Marshal(rep)
		fmt.Fprintln(out, string(data))
		return
	}
	fmt.Fprintln(out, line)
}

func (m *monitor) saveState(rep report, line string) error {
	rec := stateRecord{report: rep, Line: line, StaleAfter: rep.Time.Add(2*m.cfg.interval + m.cfg.timeout)}
	data, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	// Written beside the target and renamed over it, so that -check never reads half a file.
	dir := filepath.Dir(m.cfg.stateFile)
	tmp, err := os.CreateTemp(dir, ".state-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), m.cfg.stateFile)
}

// webhookSender posts state changes one at a time, off the probing path, so that a slow or dead
// receiver never delays detection.
type webhookSender struct {
	url     string
	client  *http.Client
	queue   chan []byte
	stopped chan struct{}
}

func newWebhookSender(rawURL string, timeout time.Duration) *webhookSender {
	w := &webhookSender{
		url: rawURL,
		// Unlike probes, a webhook usually leaves the host, possibly through the environment's proxy.
		client:  &http.Client{Timeout: timeout, Transport: &http.Transport{Proxy: http.ProxyFromEnvironment}},
		queue:   make(chan []byte, 32),
		stopped: make(chan struct{}),
	}
	go w.run()
	return w
}

func (w *webhookSender) run() {
	defer close(w.stopped)
	for body := range w.queue {
		resp, err := w.client.Post(w.url, "application/json", bytes.NewReader(body))
		if err != nil {
			fmt.Fprintf(os.Stderr, "health-monitor: webhook: %s\n", describeError(err))
			continue
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxBody))
		resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode >= 300 {
			fmt.Fprintf(os.Stderr, "health-monitor: webhook: HTTP %d\n", resp.StatusCode)
		}
	}
}

func (w *webhookSender) send(rep report, line string) {
	// "text" makes the same payload readable by chat webhooks (Slack, Mattermost) as it is.
	body, _ := json.Marshal(struct {
		Text string `json:"text"`
		report
	}{Text: "health-monitor: " + line, report: rep})
	select {
	case w.queue <- body:
	default:
		fmt.Fprintln(os.Stderr, "health-monitor: webhook: receiver too slow, dropped one state change")
	}
}

// close waits for the queued posts, at most the given time, so a last DOWN is not lost on exit.
func (w *webhookSender) close(wait time.Duration) {
	close(w.queue)
	select {
	case <-w.stopped:
	case <-time.After(wait):
	}
}

func run(ctx context.Context, cfg *config, out io.Writer) int {
	m := newMonitor(cfg)
	var hook *webhookSender
	if cfg.webhook != "" {
		hook = newWebhookSender(cfg.webhook, cfg.timeout)
		defer hook.close(cfg.timeout)
	}
	if cfg.once {
		rep := m.round(ctx)
		m.print(out, rep, m.textLine(rep))
		if rep.Changed && hook != nil {
			hook.send(rep, m.textLine(rep))
		}
		if rep.State == stateUp {
			return 0
		}
		return 1
	}
	if cfg.stateFile != "" {
		// Fail at start, not at the first HEALTHCHECK, when the state file cannot be written.
		if err := m.saveState(report{Time: time.Now().UTC(), State: stateUnknown}, "starting"); err != nil {
			fmt.Fprintf(os.Stderr, "health-monitor: error: cannot write the state file: %v\n", err)
			return 1
		}
	}
	ticker := time.NewTicker(cfg.interval)
	defer ticker.Stop()
	for {
		rep := m.round(ctx)
		if ctx.Err() != nil {
			return 0
		}
		line := m.textLine(rep)
		m.print(out, rep, line)
		if cfg.stateFile != "" {
			if err := m.saveState(rep, line); err != nil {
				fmt.Fprintf(os.Stderr, "health-monitor: cannot write the state file: %v\n", err)
			}
		}
		if rep.Changed && hook != nil {
			hook.send(rep, line)
		}
		select {
		case <-ctx.Done():
			return 0
		case <-ticker.C:
		}
	}
}

func checkState(path string, now time.Time) (int, string) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 1, fmt.Sprintf("no state yet (%v)", err)
	}
	var rec stateRecord
	if err := json.Unmarshal(data, &rec); err != nil {
		return 1, fmt.Sprintf("unreadable state file %s: %v", path, err)
	}
	if now.After(rec.StaleAfter) {
		return 1, fmt.Sprintf("stale: the last round was at %s; the monitor has stopped probing", rec.Time.Format(time.RFC3339))
	}
	if rec.State != stateUp {
		return 1, rec.Line
	}
	return 0, rec.Line
}

func main() {
	cfg, err := parseConfig(os.Args[1:], os.Getenv)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "health-monitor: error: %v\n", err)
		os.Exit(exitUsage)
	}
	if cfg.check {
		code, msg := checkState(cfg.stateFile, time.Now())
		fmt.Println(msg)
		os.Exit(code)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, cfg, os.Stdout))
}
