package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// broker is a mosquitto process on a loopback port, configured for measuring: TCP_NODELAY on
// (without it every round trip on loopback costs ~40 ms of Nagle delay), persistence on (so a
// restart keeps the agents' sessions, as a production broker does), and queues large enough that a
// fan-out of thousands of QoS 1 messages is not dropped by mosquitto's default of 1,000.
//
// internal/mqtttest does the same for tests but is bound to a testing.TB; the benchmark needs it in
// a plain program, with more connections and a restart it can time.
type broker struct {
	bin, dir, conf, logPath string
	port                    int
	url                     string

	cmd  *exec.Cmd
	done chan struct{}
}

func startBroker(bin, dir string) (*broker, error) {
	if _, err := os.Stat(bin); err != nil {
		p, lerr := exec.LookPath("mosquitto")
		if lerr != nil {
			return nil, fmt.Errorf("mosquitto not found at %s nor in PATH: install it with `apt-get install -y mosquitto`", bin)
		}
		bin = p
	}
	b := &broker{
		bin:     bin,
		dir:     dir,
		conf:    filepath.Join(dir, "mosquitto.conf"),
		logPath: filepath.Join(dir, "mosquitto.log"),
	}
	var err error
	for range 5 { // the free port may be taken between picking it and mosquitto's bind
		if b.port, err = freePort(); err != nil {
			return nil, err
		}
		b.url = "tcp://127.0.0.1:" + strconv.Itoa(b.port)
		if err = b.writeConfig(); err != nil {
			return nil, err
		}
		if err = b.start(); err == nil {
			return b, nil
		}
	}
	return nil, err
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (b *broker) writeConfig() error {
	conf := strings.Join([]string{
		fmt.Sprintf("listener %d 127.0.0.1", b.port),
		"allow_anonymous true",
		"set_tcp_nodelay true",
		"max_connections -1",
		"max_queued_messages 1000000",
		"persistence true",
		"persistence_location " + b.dir + "/",
		// Started as root, mosquitto would otherwise switch to user mosquitto and lose access to
		// its own log and database in a root-only temp folder; ignored when not root.
		"user root",
		"log_dest file " + b.logPath,
		"log_type error",
		"log_type warning",
		"log_type notice",
		"log_type information",
		"connection_messages true",
		"",
	}, "\n")
	if err := os.WriteFile(b.conf, []byte(conf), 0o600); err != nil {
		return fmt.Errorf("write mosquitto config: %w", err)
	}
	return nil
}

// start launches mosquitto and returns once it accepts TCP connections.
func (b *broker) start() error {
	runningBefore := b.countLog(" running")
	cmd := exec.Command(b.bin, "-c", b.conf)
	cmd.Dir = b.dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("run %s: %w", b.bin, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-done:
			return fmt.Errorf("mosquitto exited at start: %s", tail(b.logPath, 5))
		default:
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-done
			return errors.New("mosquitto did not accept connections within 10s")
		}
		// A connection alone could reach another process that took the port; mosquitto's
		// "running" log line, written after its bind, proves the listener is ours.
		if b.countLog(" running") <= runningBefore {
			time.Sleep(2 * time.Millisecond)
			continue
		}
		if c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(b.port)), time.Second); err == nil {
			c.Close()
			b.cmd, b.done = cmd, done
			return nil
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// stop sends SIGTERM until mosquitto exits (a SIGTERM that lands right after start can be lost,
// see internal/mqtttest) and waits for it, which is when it has written its persistence file.
func (b *broker) stop() error {
	if b.cmd == nil {
		return nil
	}
	defer func() { b.cmd = nil }()
	deadline := time.After(15 * time.Second)
	for {
		_ = b.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-b.done:
			return nil
		case <-time.After(100 * time.Millisecond):
		case <-deadline:
			_ = b.cmd.Process.Kill()
			<-b.done
			return errors.New("mosquitto did not exit within 15s of SIGTERM; killed")
		}
	}
}

// countLog counts the log lines containing substr.
func (b *broker) countLog(substr string) int {
	data, _ := os.ReadFile(b.logPath)
	return strings.Count(string(data), substr)
}

func tail(path string, n int) string {
	data, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
