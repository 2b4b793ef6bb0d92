// Command cmx-bench measures cmx-agent against a floor measured in the same run: push →
// confirmation latency, sync calls and bytes written per push, a fan-out to 1,000 endpoints and
// their idle CPU, a 1 MiB configuration, the footprint of the binary and the process, and a fleet
// of agent processes reconnecting after a broker restart.
//
// Run it from the repository root with mosquitto installed:
//
//	go run ./cmd/cmx-bench            # the full run, a few minutes
//	go run ./cmd/cmx-bench --quick    # a smoke run for CI, about a minute
//	go run ./cmd/cmx-bench fleet-sim  # 100,000 gateways reconnecting, simulated (no broker, seconds)
//
// It starts its own mosquitto on a free loopback port, builds the agent as it ships (static,
// stripped), prints a Markdown table and writes the figures as JSON (--out). docs/benchmarks.md
// explains the figures and keeps the latest table.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

type params struct {
	Quick     bool   `json:"quick"`
	Pushes    int    `json:"pushes"`
	Fanout    int    `json:"fanout"`
	Rounds    int    `json:"rounds"`
	BigBytes  int    `json:"big_bytes"`
	Fleet     int    `json:"fleet"`
	Disk      int    `json:"disk_pushes"`
	IdleSec   int    `json:"idle_seconds"`
	Spread    string `json:"fleet_spread,omitempty"` // the fleet's broker.reconnect_spread; "" = the agent's default
	Mosquitto string `json:"-"`
	Dir       string `json:"-"`
	Keep      bool   `json:"-"`
	Out       string `json:"-"`
	Only      string `json:"only,omitempty"`
	// Cluster is the folder of a running scripts/rabbitmq-cluster; with it, --only fleet-cluster
	// measures a fleet on that cluster with a node killed.
	Cluster string `json:"cluster,omitempty"`
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "floor" {
		os.Exit(runFloor(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == "fleet-sim" {
		os.Exit(runFleetSim(os.Args[2:], os.Stdout, os.Stderr))
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("cmx-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var p params
	fs.BoolVar(&p.Quick, "quick", false, "smoke run: fewer pushes, a smaller fan-out and fleet, one round")
	fs.IntVar(&p.Pushes, "pushes", 500, "pushes measured for latency (each for the agent and the floor)")
	fs.IntVar(&p.Fanout, "fanout", 1000, "endpoints of the fan-out agent")
	fs.IntVar(&p.Rounds, "rounds", 3, "rounds of the fan-out and the 1 MiB push (median reported)")
	fs.IntVar(&p.BigBytes, "big", 1<<20, "bytes of the large configuration")
	fs.IntVar(&p.Fleet, "fleet", 200, "agent processes in the fleet test (0 skips it)")
	fs.IntVar(&p.Disk, "disk-pushes", 100, "pushes counted for sync calls and bytes written (each path and the floor)")
	fs.IntVar(&p.IdleSec, "idle", 30, "seconds of idle CPU measured with the fan-out's endpoints")
	fs.StringVar(&p.Spread, "fleet-spread", "", "broker.reconnect_spread of the fleet's agents, e.g. 0s (default: the agent's default)")
	fs.StringVar(&p.Mosquitto, "mosquitto", "/usr/sbin/mosquitto", "mosquitto binary")
	fs.StringVar(&p.Dir, "dir", "", "work folder (default: a new temporary folder); its disk is what is measured")
	fs.BoolVar(&p.Keep, "keep", false, "keep the work folder (logs, databases, broker log)")
	fs.StringVar(&p.Cluster, "cluster", "", "folder of a running scripts/rabbitmq-cluster, for --only fleet-cluster (node 1 is killed)")
	fs.StringVar(&p.Only, "only", "", "run only these parts, comma-separated: single (footprint, latency, large push), disk (sync calls, bytes written), fanout (with idle CPU), fleet")
	fs.StringVar(&p.Out, "out", "dist/bench.json", "JSON report, relative to the repository root unless absolute")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if p.Quick {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		if !set["pushes"] {
			p.Pushes = 100
		}
		if !set["fanout"] {
			p.Fanout = 200
		}
		if !set["rounds"] {
			p.Rounds = 1
		}
		if !set["fleet"] {
			p.Fleet = 20
		}
		if !set["disk-pushes"] {
			p.Disk = 20
		}
		if !set["idle"] {
			p.IdleSec = 5
		}
	}
	if p.Pushes < 10 || p.Fanout < 1 || p.Rounds < 1 || p.BigBytes < 1024 || p.Fleet < 0 || p.Disk < 1 || p.IdleSec < 1 {
		fmt.Fprintln(stderr, "cmx-bench: --pushes >= 10, --fanout >= 1, --rounds >= 1, --big >= 1024, --fleet >= 0, --disk-pushes >= 1, --idle >= 1")
		return 2
	}
	rep, err := bench(p, stderr)
	if rep != nil {
		rep.writeTable(stdout)
		if werr := rep.writeJSON(p.Out); werr != nil {
			fmt.Fprintln(stderr, "cmx-bench:", werr)
			return 1
		}
	}
	if err != nil {
		fmt.Fprintln(stderr, "cmx-bench:", err)
		return 1
	}
	return 0
}

func bench(p params, logw io.Writer) (*report, error) {
	root, err := moduleRoot()
	if err != nil {
		return nil, err
	}
	if !filepath.IsAbs(p.Out) {
		p.Out = filepath.Join(root, p.Out)
	}
	raiseNoFile()
	dir := p.Dir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "cmx-bench-"); err != nil {
			return nil, err
		}
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if p.Keep {
		fmt.Fprintln(logw, "work folder:", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	logf := func(format string, args ...any) {
		fmt.Fprintf(logw, "%s  "+format+"\n", append([]any{time.Now().Format("15:04:05.000")}, args...)...)
	}

	rep := &report{Started: time.Now().UTC().Format(time.RFC3339), Params: p, Machine: machineInfo(dir)}
	logf("machine: %s, %d cores, %s, kernel %s, load %s", rep.Machine.CPU, rep.Machine.Nproc, rep.Machine.Disk, rep.Machine.Kernel, rep.Machine.LoadBefore)

	bin := filepath.Join(dir, "cmx-agent")
	logf("building cmx-agent (CGO_ENABLED=0, -trimpath, -ldflags \"-s -w\")")
	if err := buildAgent(root, bin); err != nil {
		return nil, err
	}
	b, err := startBroker(p.Mosquitto, mkdir(dir, "broker"))
	if err != nil {
		return nil, err
	}
	defer b.stop()
	logf("mosquitto on %s", b.url)
	srv, err := newServer(b.url, "cmx-bench-server")
	if err != nil {
		return nil, err
	}
	r := &runner{p: p, dir: dir, bin: bin, broker: b, srv: srv, rep: rep, logf: logf}
	defer func() { r.srv.close() }()

	steps := []struct {
		key, name string
		fn        func() error
	}{
		{"single", "footprint and latency, one endpoint", r.single},
		{"disk", "sync calls and bytes written per push", r.disk},
		{"fanout", "fan-out", r.fanout},
		{"fleet", "fleet", r.fleet},
		{"fleet-cluster", "fleet on a RabbitMQ cluster", r.fleetCluster},
	}
	for _, s := range steps {
		if p.Only != "" && !slices.Contains(strings.Split(p.Only, ","), s.key) {
			continue
		}
		if err := s.fn(); err != nil {
			rep.Machine.LoadAfter = loadavg()
			return rep, fmt.Errorf("%s: %w", s.name, err)
		}
	}
	rep.Machine.LoadAfter = loadavg()
	rep.Finished = time.Now().UTC().Format(time.RFC3339)
	logf("done; load %s", rep.Machine.LoadAfter)
	return rep, nil
}

func mkdir(parts ...string) string {
	d := filepath.Join(parts...)
	_ = os.MkdirAll(d, 0o755)
	return d
}

// raiseNoFile lifts the soft limit on open files to the hard one: mosquitto and the fleet inherit
// it, and each agent holds a connection.
func raiseNoFile() {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil && l.Cur < l.Max {
		l.Cur = l.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}

func (r *report) writeJSON(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o644)
}
