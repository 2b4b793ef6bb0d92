// Package mqtttest runs a real mosquitto broker on a free loopback port for
// integration tests, and provides a recording MQTT client to observe and drive
// what goes over it.
//
// The broker is Debian's mosquitto (apt-get install mosquitto). A missing
// binary fails the test instead of skipping it, so that a machine without the
// broker cannot silently pass the integration tests.
//
// Every helper that waits does so for an event with a deadline; the only
// fixed time window is Sub.None, which proves that something does not happen.
package mqtttest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cmx-agent/cmx-agent/internal/testkit"
)

// DefaultMosquitto is where Debian's mosquitto package installs the broker.
const DefaultMosquitto = "/usr/sbin/mosquitto"

// Deadlines are generous because the machines running these tests are small
// and shared: they bound a hang, they are not expected durations.
const (
	startTimeout = 20 * time.Second
	stopTimeout  = 10 * time.Second
	opTimeout    = 10 * time.Second
	pollInterval = 5 * time.Millisecond
	// sigtermRepeat is how often Stop repeats SIGTERM until mosquitto exits.
	sigtermRepeat = 100 * time.Millisecond
)

// portAttempts bounds how often Start picks another port when the one it
// chose was taken between FreePort and mosquitto's bind.
const portAttempts = 5

// errAddrInUse marks a start that failed only because the port was taken.
var errAddrInUse = errors.New("address already in use")

// errStartTimeout marks a start that did not accept connections within startTimeout. A first
// start gets one more try on a fresh port: on a shared CI machine running two emulated suites at
// once, a broker once stayed silent for 10 s (its log tail and process state are in the error).
var errStartTimeout = errors.New("did not accept connections in time")

// Broker is a mosquitto process listening on a loopback port. Its
// configuration, log and persistence file live in a per-test temp folder, so
// a Restart keeps persistent sessions and their queued messages.
type Broker struct {
	// Addr is "127.0.0.1:PORT".
	Addr string
	// URL is "tcp://127.0.0.1:PORT", ready for paho's AddBroker.
	URL string
	// Port is the TCP port; it stays the same across Stop and Start.
	Port int
	// Dir is the broker's temp folder (config, log, mosquitto.db).
	Dir string
	// Ports are the loopback ports of Options.Listeners, in the same order.
	// Like Port, they stay the same across Stop and Start.
	Ports []int

	bin       string
	startWait time.Duration // startTimeout, shorter in this package's own tests
	confPath  string
	logPath   string
	opts      Options

	mu        sync.Mutex
	proc      *process
	clients   map[*Client]struct{}
	clientSeq int
}

type process struct {
	cmd    *exec.Cmd
	output *testkit.Buffer
	done   chan struct{}
	err    error // set before done is closed
}

// Options add to the broker's configuration, for tests that need more than
// the plain anonymous listener.
type Options struct {
	// Listeners are extra listeners, each on its own free loopback port
	// (Broker.Ports). The main listener stays plain and anonymous, so
	// Broker.Client keeps working; per-listener settings are turned on so
	// that each extra listener can have its own password_file or TLS files.
	Listeners []Listener
	// Lines are added to the main section of mosquitto.conf, after the main
	// listener's settings and before the extra listeners: global settings
	// and bridges ("connection NAME", "address 127.0.0.1:PORT", "topic ...").
	Lines []string
}

// Listener is an extra mosquitto listener.
type Listener struct {
	// Lines follow "listener PORT 127.0.0.1" in mosquitto.conf, e.g.
	// "certfile /path", "require_certificate true", "password_file /path".
	// Without an allow_anonymous line the listener gets
	// "allow_anonymous false". mosquitto runs as root (see writeConfig), so
	// files in a root-only temp folder are readable to it.
	Lines []string
}

// Start starts mosquitto on a free loopback port and waits until it accepts
// connections. The broker is stopped when the test ends; if the test failed,
// the tail of the broker's log is written to the test log.
func Start(t testing.TB) *Broker {
	t.Helper()
	return start(t, DefaultMosquitto, Options{})
}

// StartWith is Start with extra configuration: listeners for TLS, mutual TLS
// or passwords next to the plain one.
func StartWith(t testing.TB, opts Options) *Broker {
	t.Helper()
	return start(t, DefaultMosquitto, opts)
}

func start(t testing.TB, bin string, opts Options) *Broker {
	t.Helper()
	path, err := findMosquitto(bin)
	if err != nil {
		t.Fatalf("mqtttest: %v: the integration tests need a real broker, install it with `apt-get install -y mosquitto`", err)
	}
	dir := t.TempDir()
	b := &Broker{
		Dir:       dir,
		bin:       path,
		startWait: startTimeout,
		confPath:  filepath.Join(dir, "mosquitto.conf"),
		logPath:   filepath.Join(dir, "mosquitto.log"),
		clients:   make(map[*Client]struct{}),
		opts:      opts,
	}
	t.Cleanup(func() { b.cleanup(t) })

	inUse, timeouts := 0, 0
	for {
		b.setPort(FreePort(t))
		b.Ports = b.Ports[:0]
		for range opts.Listeners {
			b.Ports = append(b.Ports, FreePort(t))
		}
		if err := b.writeConfig(); err != nil {
			t.Fatalf("mqtttest: %v", err)
		}
		err := b.launch()
		if err == nil {
			return b
		}
		retry := false
		switch {
		case errors.Is(err, errAddrInUse) && inUse < portAttempts-1:
			inUse++
			retry = true
		case errors.Is(err, errStartTimeout) && timeouts == 0:
			timeouts++
			retry = true
		}
		if !retry {
			t.Fatalf("mqtttest: start mosquitto on %s: %v\n%s", b.Addr, err, b.logTail())
		}
		t.Logf("mqtttest: start mosquitto on %s: %v\n%s\nmqtttest: trying again on another port", b.Addr, err, b.logTail())
	}
}

// findMosquitto prefers the given path and falls back to PATH, so a broker
// installed elsewhere still works.
func findMosquitto(bin string) (string, error) {
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	path, err := exec.LookPath("mosquitto")
	if err != nil {
		return "", fmt.Errorf("mosquitto not found at %s nor in PATH", bin)
	}
	return path, nil
}

func (b *Broker) setPort(port int) {
	b.Port = port
	b.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	b.URL = "tcp://" + b.Addr
}

func (b *Broker) writeConfig() error {
	// `user root`: started as root, mosquitto otherwise switches to user
	// mosquitto and can no longer write its log and database in a root-only
	// temp folder. It is ignored when not started as root.
	var head []string
	if len(b.opts.Listeners) > 0 {
		head = append(head, "per_listener_settings true")
	}
	conf := strings.Join(append(head,
		fmt.Sprintf("listener %d 127.0.0.1", b.Port),
		"allow_anonymous true",
		// Without it every request/response round trip on loopback costs ~44 ms.
		"set_tcp_nodelay true",
		"persistence true",
		"persistence_location "+b.Dir,
		"user root",
		"log_dest file "+b.logPath,
		"log_type all",
		"connection_messages true",
	), "\n") + "\n"
	for _, line := range b.opts.Lines {
		conf += line + "\n"
	}
	for i, l := range b.opts.Listeners {
		conf += fmt.Sprintf("\nlistener %d 127.0.0.1\n", b.Ports[i])
		anon := false
		for _, line := range l.Lines {
			conf += line + "\n"
			anon = anon || strings.HasPrefix(strings.TrimSpace(line), "allow_anonymous")
		}
		if !anon {
			conf += "allow_anonymous false\n"
		}
	}
	if err := os.WriteFile(b.confPath, []byte(conf), 0o600); err != nil {
		return fmt.Errorf("write mosquitto config: %w", err)
	}
	return nil
}

// Start starts the broker again on the same port after Stop, and waits until
// it accepts connections and every Client of this broker has reconnected.
func (b *Broker) Start(t testing.TB) {
	t.Helper()
	b.mu.Lock()
	running := b.proc != nil
	b.mu.Unlock()
	if running {
		t.Fatalf("mqtttest: Start: broker on %s is already running", b.Addr)
	}
	if err := b.launch(); err != nil {
		t.Fatalf("mqtttest: restart mosquitto on %s: %v\n%s", b.Addr, err, b.logTail())
	}
	for _, c := range b.liveClients() {
		if err := c.waitConnected(true, opTimeout); err != nil {
			t.Fatalf("mqtttest: client %s after broker start: %v\n%s", c.ID, err, b.logTail())
		}
	}
}

// Stop sends SIGTERM and waits for mosquitto to exit, which is when it writes
// its persistence file. It also waits until every Client of this broker has
// noticed the lost connection, so that a later Start can wait for their
// reconnection.
func (b *Broker) Stop(t testing.TB) {
	t.Helper()
	if err := b.stop(); err != nil {
		t.Fatalf("mqtttest: stop mosquitto on %s: %v\n%s", b.Addr, err, b.logTail())
	}
	for _, c := range b.liveClients() {
		if err := c.waitConnected(false, opTimeout); err != nil {
			t.Fatalf("mqtttest: client %s after broker stop: %v", c.ID, err)
		}
	}
}

// Restart is Stop followed by Start: persistent sessions, their
// subscriptions and queued QoS 1/2 messages survive it.
func (b *Broker) Restart(t testing.TB) {
	t.Helper()
	b.Stop(t)
	b.Start(t)
}

// Freeze stops the broker process with SIGSTOP: its sockets stay open but
// nothing is read or answered, as with a hung broker or a silent network.
// Clients find out only through their keepalive.
func (b *Broker) Freeze(t testing.TB) {
	t.Helper()
	b.signal(t, syscall.SIGSTOP)
}

// Thaw resumes a broker stopped by Freeze with SIGCONT.
func (b *Broker) Thaw(t testing.TB) {
	t.Helper()
	b.signal(t, syscall.SIGCONT)
}

func (b *Broker) signal(t testing.TB, sig syscall.Signal) {
	t.Helper()
	b.mu.Lock()
	p := b.proc
	b.mu.Unlock()
	if p == nil {
		t.Fatalf("mqtttest: %v: broker on %s is not running", sig, b.Addr)
	}
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("mqtttest: send %v to mosquitto: %v", sig, err)
	}
}

// Running reports whether the broker process is up.
func (b *Broker) Running() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.proc == nil {
		return false
	}
	select {
	case <-b.proc.done:
		return false
	default:
		return true
	}
}

func (b *Broker) launch() error {
	runningBefore := countRunning(b.Log())

	cmd := exec.Command(b.bin, "-c", b.confPath)
	cmd.Dir = b.Dir
	out := &testkit.Buffer{}
	cmd.Stdout = out
	cmd.Stderr = out
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("run %s: %w", b.bin, err)
	}
	p := &process{cmd: cmd, output: out, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()

	if err := b.waitAccepting(p, runningBefore); err != nil {
		_ = cmd.Process.Kill()
		<-p.done
		return err
	}
	b.mu.Lock()
	b.proc = p
	b.mu.Unlock()
	return nil
}

// waitAccepting waits for the "running" log line of this start, which
// mosquitto writes only after its listener is bound (so a port taken by some
// other process is not mistaken for ours), then for a TCP connection to work.
func (b *Broker) waitAccepting(p *process, runningBefore int) error {
	deadline := time.NewTimer(b.startWait)
	defer deadline.Stop()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	running := false
	var dialErr error
	for {
		select {
		case <-p.done:
			msg := strings.TrimSpace(p.output.String())
			if strings.Contains(b.Log(), "Address already in use") || strings.Contains(msg, "Address already in use") {
				return fmt.Errorf("mosquitto exited: %w", errAddrInUse)
			}
			return fmt.Errorf("mosquitto exited before accepting connections (%v): %s", p.err, msg)
		case <-deadline.C:
			seen := "its log has no \"running\" line of this start"
			if running {
				seen = fmt.Sprintf("its log says running, the last connection attempt: %v", dialErr)
			}
			return fmt.Errorf("mosquitto %w (%v; %s; process %s): %s", errStartTimeout, b.startWait, seen,
				processState(p.cmd.Process.Pid), strings.TrimSpace(p.output.String()))
		case <-tick.C:
			if !running && countRunning(b.Log()) <= runningBefore {
				continue
			}
			running = true
			conn, err := net.DialTimeout("tcp", b.Addr, time.Second)
			if err != nil {
				dialErr = err
				continue
			}
			_ = conn.Close()
			return nil
		}
	}
}

// processState is the State line and wait channel of a process from /proc, for the error of a
// start that timed out: whether mosquitto was running, sleeping in a system call, or stopped.
func processState(pid int) string {
	state := "state unknown"
	if data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(line, "State:"); ok {
				state = "state " + strings.TrimSpace(v)
			}
		}
	}
	if wchan, err := os.ReadFile(fmt.Sprintf("/proc/%d/wchan", pid)); err == nil && len(wchan) > 0 {
		state += ", waiting in " + string(wchan)
	}
	return state
}

// countRunning counts "mosquitto version X running" lines: the log file is
// appended to across restarts.
func countRunning(log string) int {
	n := 0
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, "mosquitto version ") && strings.HasSuffix(line, " running") {
			n++
		}
	}
	return n
}

func (b *Broker) stop() error {
	b.mu.Lock()
	p := b.proc
	b.proc = nil
	b.mu.Unlock()
	if p == nil {
		return errors.New("broker is not running")
	}
	select {
	case <-p.done:
		return fmt.Errorf("mosquitto had exited on its own (%v): %s", p.err, p.output.String())
	default:
	}
	// mosquitto installs its SIGTERM handler, logs "running" and only then
	// sets its run flag, so a SIGTERM right after start can be overwritten
	// and lost. Repeating it is harmless: the handler only clears that flag.
	// A broker left frozen by Freeze would not see SIGTERM until resumed.
	_ = p.cmd.Process.Signal(syscall.SIGCONT)
	timer := time.NewTimer(stopTimeout)
	defer timer.Stop()
	resend := time.NewTicker(sigtermRepeat)
	defer resend.Stop()
	for stopped := false; !stopped; {
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
			return fmt.Errorf("send SIGTERM: %w", err)
		}
		select {
		case <-p.done:
			stopped = true
		case <-resend.C:
		case <-timer.C:
			_ = p.cmd.Process.Kill()
			<-p.done
			return fmt.Errorf("mosquitto did not exit within %v of SIGTERM; killed", stopTimeout)
		}
	}
	if p.err != nil {
		return fmt.Errorf("mosquitto exited after SIGTERM: %w: %s", p.err, p.output.String())
	}
	return nil
}

func (b *Broker) cleanup(t testing.TB) {
	b.mu.Lock()
	running := b.proc != nil
	b.mu.Unlock()
	if running {
		if err := b.stop(); err != nil {
			t.Errorf("mqtttest: stop mosquitto on %s at test end: %v", b.Addr, err)
		}
	}
	if t.Failed() {
		t.Logf("mqtttest: mosquitto log (%s):\n%s", b.logPath, b.logTail())
	}
}

// Log returns the broker's log so far, across restarts.
func (b *Broker) Log() string {
	data, err := os.ReadFile(b.logPath)
	if err != nil {
		return ""
	}
	return string(data)
}

const logTailLines = 200

func (b *Broker) logTail() string {
	lines := strings.Split(strings.TrimRight(b.Log(), "\n"), "\n")
	if len(lines) <= logTailLines {
		return strings.Join(lines, "\n")
	}
	return fmt.Sprintf("[%d earlier lines omitted]\n%s", len(lines)-logTailLines,
		strings.Join(lines[len(lines)-logTailLines:], "\n"))
}

// Connects returns how many CONNECTs from clientID the broker accepted so far,
// across restarts. Mosquitto logs the connection before it sends CONNACK, so
// the count already includes a connection whose Connect call has returned.
func (b *Broker) Connects(clientID string) int {
	n := 0
	marker := " as " + clientID + " ("
	for _, line := range strings.Split(b.Log(), "\n") {
		if strings.Contains(line, "New client connected from ") && strings.Contains(line, marker) {
			n++
		}
	}
	return n
}

// WaitLog waits until the broker's log contains substr at least n times, for
// events only the broker sees, e.g. "Received SUBSCRIBE from cmx-agent-x".
func (b *Broker) WaitLog(t testing.TB, substr string, n int, timeout time.Duration) {
	t.Helper()
	if err := b.waitLog(substr, n, timeout); err != nil {
		t.Fatalf("mqtttest: %v\n%s", err, b.logTail())
	}
}

func (b *Broker) waitLog(substr string, n int, timeout time.Duration) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		got := strings.Count(b.Log(), substr)
		if got >= n {
			return nil
		}
		select {
		case <-deadline.C:
			return fmt.Errorf("broker log has %q %d times, want at least %d within %v", substr, got, n, timeout)
		case <-tick.C:
		}
	}
}

func (b *Broker) liveClients() []*Client {
	b.mu.Lock()
	defer b.mu.Unlock()
	cs := make([]*Client, 0, len(b.clients))
	for c := range b.clients {
		cs = append(cs, c)
	}
	return cs
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago. Another
// process may take it before it is used; Start retries with another port.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("mqtttest: find a free port: %v", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		t.Fatalf("mqtttest: release port %d: %v", port, err)
	}
	return port
}
