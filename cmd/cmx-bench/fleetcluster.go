package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// clusterURLs reads the MQTT ports scripts/rabbitmq-cluster wrote into dir.
func clusterURLs(dir string) ([]string, error) {
	raw, err := os.ReadFile(filepath.Join(dir, "mqtt-ports"))
	if err != nil {
		return nil, fmt.Errorf("cluster: %w (start it with scripts/rabbitmq-cluster start %s)", err, dir)
	}
	var urls []string
	for _, f := range strings.Fields(string(raw)) {
		if _, err := strconv.Atoi(f); err != nil {
			return nil, fmt.Errorf("cluster: port %q in %s/mqtt-ports", f, dir)
		}
		urls = append(urls, "tcp://127.0.0.1:"+f)
	}
	if len(urls) < 2 {
		return nil, fmt.Errorf("cluster: %d nodes in %s/mqtt-ports, want at least 2", len(urls), dir)
	}
	return urls, nil
}

// fleetCluster measures a fleet on a RabbitMQ cluster whose first node, the one every agent
// connects to (servers are tried in order), dies with kill -9: the time until every agent has
// pulled again from a surviving node, and the most pulls per 100 ms at a server on the last node.
func (r *runner) fleetCluster() error {
	if r.p.Cluster == "" {
		return nil
	}
	urls, err := clusterURLs(r.p.Cluster)
	if err != nil {
		return err
	}
	n := r.p.Fleet
	app := "fleetc" + strconv.FormatInt(time.Now().Unix()%100000, 10) // fresh sessions on a reused cluster
	srv, err := newServer(urls[len(urls)-1], "cmx-bench-cluster-server-"+app)
	if err != nil {
		return err
	}
	defer srv.close()
	r.logf("fleet on the cluster: starting %d agents on %v", n, urls)
	agents := make([]*agentProc, 0, n)
	defer func() {
		var wg sync.WaitGroup
		for _, a := range agents {
			wg.Add(1)
			go func() { defer wg.Done(); a.stop() }()
		}
		wg.Wait()
	}()
	for i := range n {
		dir := mkdir(r.dir, app, strconv.Itoa(i))
		tok := fmt.Sprintf("gw-%04d", i)
		// All the nodes, the first one first.
		cfg, err := agentConfig(dir, strings.Join(urls, " "), app, []string{tok}, "64KiB", r.p.Spread)
		if err != nil {
			return err
		}
		a, err := startAgent(r.bin, dir, cfg, false)
		if err != nil {
			return err
		}
		agents = append(agents, a)
	}
	pulled := func(timeout time.Duration) ([]time.Time, error) { return srv.pulls(app, n, timeout) }
	if _, err := pulled(180 * time.Second); err != nil {
		return err
	}
	r.logf("fleet on the cluster: all %d pulled; killing node 1", n)
	tKill := time.Now()
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	script := filepath.Join(root, "scripts", "rabbitmq-cluster")
	if out, err := exec.Command(script, "kill-node", r.p.Cluster, "1").CombinedOutput(); err != nil {
		return fmt.Errorf("kill node 1: %v\n%s", err, out)
	}
	at, err := pulled(240 * time.Second)
	restart := exec.Command(script, "start-node", r.p.Cluster, "1")
	if out, rerr := restart.CombinedOutput(); rerr != nil {
		r.logf("node 1 did not come back: %v\n%s", rerr, out)
	}
	if err != nil {
		return err
	}
	last := slices.MaxFunc(at, time.Time.Compare)
	peak, windows := peakPer100ms(at, tKill)
	note := fmt.Sprintf("%d agents, %d-node RabbitMQ 3.10 cluster, quorum queues; node 1 (every agent's) killed with kill -9; reconnect_spread %s",
		n, len(urls), spreadLabel(r.p.Spread))
	r.rep.limit("fleet on a cluster: node killed → all pulled again from a surviving node", "ms", ms(last.Sub(tKill)), 0, note)
	r.rep.limit("fleet on a cluster: peak pulls per 100 ms at the server", "agents", float64(peak), 0, fmt.Sprintf("%d windows used", windows))
	r.logf("fleet on the cluster: all pulled again %v after the kill; peak %d per 100 ms", last.Sub(tKill).Round(time.Millisecond), peak)
	return nil
}
