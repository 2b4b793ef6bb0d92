package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// buildAgent builds cmx-agent as it ships: static, stripped, without build paths.
func buildAgent(root, out string) error {
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", out, "./cmd/cmx-agent")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/cmx-agent: %v\n%s", err, b)
	}
	return nil
}

// moduleRoot finds the repository root, so the benchmark works from any folder inside it.
func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("run cmx-bench from inside the cmx-agent repository")
	}
	return filepath.Dir(mod), nil
}

// agentConfig writes an agent configuration with one endpoint per token; url is its broker, or
// several separated by spaces (failover, in order); spread, when not "", is its
// broker.reconnect_spread; the endpoints of the tokens in hooked run `true` as their hook.
func agentConfig(dir, url, app string, tokens []string, maxPayload, spread string, hooked ...string) (string, error) {
	var b strings.Builder
	servers := strings.Fields(url)
	for i, s := range servers {
		servers[i] = strconv.Quote(s)
	}
	fmt.Fprintf(&b, "[broker]\nservers = [%s]\nclient_id = %q\n", strings.Join(servers, ", "), "cmx-agent-"+app+"-"+tokens[0])
	if spread != "" {
		fmt.Fprintf(&b, "reconnect_spread = %q\n", spread)
	}
	fmt.Fprintf(&b, "[kaa]\napp_version = %q\ndialect = \"cmx3\"\n", app)
	fmt.Fprintf(&b, "[agent]\nstate_dir = %q\nsocket = %q\nmax_payload = %q\n",
		filepath.Join(dir, "state"), filepath.Join(dir, "state", "agent.sock"), maxPayload)
	for _, t := range tokens {
		fmt.Fprintf(&b, "[[endpoint]]\ntoken = %q\noutput = %q\n", t, filepath.Join(dir, "out", t+".json"))
		if slices.Contains(hooked, t) {
			b.WriteString("hook = [\"true\"]\n")
		}
	}
	path := filepath.Join(dir, "agent.toml")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	return path, os.WriteFile(path, []byte(b.String()), 0o644)
}

// agentProc is a running cmx-agent with a fake systemd notify socket.
type agentProc struct {
	cmd     *exec.Cmd
	started time.Time
	done    chan struct{}
	logPath string

	mu      sync.Mutex
	readyAt time.Time
	notify  *net.UnixConn
}

func startAgent(bin, dir, config string, notify bool) (*agentProc, error) {
	p := &agentProc{done: make(chan struct{}), logPath: filepath.Join(dir, "agent.log")}
	logf, err := os.Create(p.logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "run", "--config", config)
	// The log reaches its file through a pipe, as it reaches journald under systemd: its writes
	// are not the agent's in /proc/<pid>/io.
	cmd.Stderr = struct{ io.Writer }{logf}
	cmd.Env = os.Environ()
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if notify {
		sock := filepath.Join(dir, "notify.sock")
		c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
		if err != nil {
			logf.Close()
			return nil, fmt.Errorf("notify socket: %w", err)
		}
		p.notify = c
		cmd.Env = append(cmd.Env, "NOTIFY_SOCKET="+sock)
		go p.readNotify()
	}
	p.cmd = cmd
	p.started = time.Now()
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start cmx-agent: %w", err)
	}
	go func() { _ = cmd.Wait(); logf.Close(); close(p.done) }()
	return p, nil
}

func (p *agentProc) readNotify() {
	buf := make([]byte, 4096)
	for {
		n, _, err := p.notify.ReadFromUnix(buf)
		if err != nil {
			return
		}
		at := time.Now()
		for _, line := range strings.Split(string(buf[:n]), "\n") {
			if line == "READY=1" {
				p.mu.Lock()
				if p.readyAt.IsZero() {
					p.readyAt = at
				}
				p.mu.Unlock()
			}
		}
	}
}

// ready returns start → READY=1, or false if the agent sent none.
func (p *agentProc) ready() (time.Duration, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.readyAt.IsZero() {
		return 0, false
	}
	return p.readyAt.Sub(p.started), true
}

// memKB reads a Vm* field (VmRSS, VmHWM) of /proc/<pid>/status in KiB.
func (p *agentProc) memKB(field string) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	for _, line := range bytes.Split(data, []byte("\n")) {
		if v, ok := bytes.CutPrefix(line, []byte(field+":")); ok {
			f := strings.Fields(string(v))
			if len(f) >= 1 {
				return strconv.ParseInt(f[0], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("%s not in /proc/%d/status", field, p.cmd.Process.Pid)
}

// resetPeak resets VmHWM to the current RSS (Linux ≥ 4.0), so a later VmHWM is the peak of what
// happened in between.
func (p *agentProc) resetPeak() error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", p.cmd.Process.Pid), []byte("5"), 0)
}

func (p *agentProc) pid() int { return p.cmd.Process.Pid }

func (p *agentProc) alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM and waits; the agent promises to exit within 5 s.
func (p *agentProc) stop() {
	signalWait(p.cmd.Process, syscall.SIGTERM, p.done, 10*time.Second)
	if p.notify != nil {
		p.notify.Close()
	}
}

// signalWait sends sig to proc and waits until done is closed; after timeout it kills proc, waits,
// and returns false.
func signalWait(proc *os.Process, sig os.Signal, done <-chan struct{}, timeout time.Duration) bool {
	_ = proc.Signal(sig)
	select {
	case <-done:
		return true
	case <-time.After(timeout):
		_ = proc.Kill()
		<-done
		return false
	}
}

func (p *agentProc) logTail() string {
	f, err := os.Open(p.logPath)
	if err != nil {
		return ""
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > 10 {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}
