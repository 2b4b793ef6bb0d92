package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// The floor is the least any responder must do for one push: parse it, replace a file atomically
// and durably (temporary file, write, fsync, rename, fsync of the folder), and publish a QoS 1
// confirmation. It keeps no database, no outbox and no history, so it promises much less than
// cmx-agent; its times are what the agent is measured against. It runs as its own process
// (`cmx-bench floor`), like the agent, with its own connection.

// floorParallel bounds concurrent writes by default, as the agent's apply semaphore does; the
// sequential floor (--parallel 1) handles one push after the other.
const floorParallel = 16

func runFloor(args []string) int {
	fs := flag.NewFlagSet("floor", flag.ContinueOnError)
	url := fs.String("url", "", "broker URL")
	app := fs.String("app", "floor", "application version (topic level)")
	dir := fs.String("dir", "", "folder for the output files")
	parallel := fs.Int("parallel", floorParallel, "pushes handled at once (1: one after the other)")
	if err := fs.Parse(args); err != nil || *url == "" || *dir == "" || *parallel < 1 {
		fmt.Fprintln(os.Stderr, "usage: cmx-bench floor --url URL --app APP --dir DIR [--parallel N]")
		return 2
	}
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "floor:", err)
		return 1
	}
	sem := make(chan struct{}, *parallel)
	handle := func(c mqtt.Client, m mqtt.Message) {
		sem <- struct{}{}
		defer func() { <-sem }()
		var p struct {
			ID      json.RawMessage `json:"id"`
			Entries json.RawMessage `json:"entries"`
		}
		status := "ok"
		if err := json.Unmarshal(m.Payload(), &p); err != nil || len(p.Entries) == 0 {
			status = "invalid payload"
		} else {
			token := strings.Split(m.Topic(), "/")[3]
			if err := durableWrite(filepath.Join(*dir, token+".json"), p.Entries); err != nil {
				status = "write failed: " + err.Error()
			}
		}
		conf, _ := json.Marshal(struct {
			ID     json.RawMessage `json:"id,omitempty"`
			Status string          `json:"status"`
		}{p.ID, status})
		c.Publish(m.Topic()+"/status", 1, false, conf)
	}
	o := mqtt.NewClientOptions().
		AddBroker(*url).
		SetClientID("cmx-bench-floor-" + *app).
		SetCleanSession(true).
		SetOrderMatters(false).
		SetAutoReconnect(false).
		SetKeepAlive(60 * time.Second)
	c := mqtt.NewClient(o)
	if err := wait(c.Connect()); err != nil {
		fmt.Fprintln(os.Stderr, "floor: connect:", err)
		return 1
	}
	if err := wait(c.Subscribe("kp1/"+*app+"/cmx/+/json", 1, handle)); err != nil {
		fmt.Fprintln(os.Stderr, "floor: subscribe:", err)
		return 1
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin) // runs until the benchmark closes stdin
	c.Disconnect(100)
	return 0
}

// durableWrite is the floor's atomic durable replacement.
func durableWrite(path string, data []byte) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// floorProc is a running floor responder.
type floorProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	app   string
}

func startFloor(url, app, dir string, parallel int) (*floorProc, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, "floor", "--url", url, "--app", app, "--dir", dir, "--parallel", strconv.Itoa(parallel))
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "ready" {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, errors.New("floor responder did not start")
	}
	return &floorProc{cmd: cmd, stdin: stdin, app: app}, nil
}

func (f *floorProc) pid() int { return f.cmd.Process.Pid }

func (f *floorProc) stop() {
	f.stdin.Close()
	done := make(chan struct{})
	go func() { _ = f.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = f.cmd.Process.Kill()
		<-done
	}
}
