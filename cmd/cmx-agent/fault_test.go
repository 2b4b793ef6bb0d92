package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cmx-agent/cmx-agent/internal/mqtttest"
	"github.com/cmx-agent/cmx-agent/internal/testkit"
	"github.com/cmx-agent/cmx-agent/store"
)

// The fault suite: the real binary against a real mosquitto while the broker restarts, freezes or
// becomes unreachable, while the agent is killed, its disk fills or its database is damaged. After
// each fault, the output must equal the last pushed configuration and every push must have been
// confirmed (applied, or superseded by a newer one). scripts/soak runs the same faults at random.

const faultApp = "fault-v1"

// faultEnv is one agent, its broker and the server side. The agent connects to its own listener
// (agentPort), the server to the broker's main one, so a network cut can isolate the agent alone
// while the server keeps pushing.
type faultEnv struct {
	t         *testing.T
	broker    *mqtttest.Broker
	agentPort int
	server    *mqtttest.Client
	status    *mqtttest.Sub
	dir       string
	config    string
	outDir    string
	output    string
	state     string
	prefix    string
	agent     *proc
	nftTable  string

	nextID  int
	last    int            // id of the newest push
	pushed  []int          // every push id, in order
	faults  map[string]int // injected, by name
	restart int            // agent starts
}

type faultOpts struct {
	keepalive string // agent's keepalive; default 2s so that a silent broker is noticed soon
	tmpfsOut  bool   // output folder on a small tmpfs (root only), for disk-full faults
}

func newFaultEnv(t *testing.T, o faultOpts) *faultEnv {
	t.Helper()
	if o.keepalive == "" {
		o.keepalive = "2s"
	}
	b := mqtttest.StartWith(t, mqtttest.Options{Listeners: []mqtttest.Listener{{Lines: []string{"allow_anonymous true"}}}})
	dir := t.TempDir()
	e := &faultEnv{
		t: t, broker: b, agentPort: b.Ports[0], dir: dir,
		config: filepath.Join(dir, "agent.toml"), outDir: filepath.Join(dir, "out"),
		state: filepath.Join(dir, "state"), prefix: "kp1/" + faultApp + "/cmx/gw-001",
		faults: map[string]int{},
	}
	e.output = filepath.Join(e.outDir, "gw-001.json")
	if o.tmpfsOut {
		e.mountTmpfs()
	}
	e.writeConfig(fmt.Sprintf(`[broker]
servers = ["tcp://127.0.0.1:%d"]
client_id = "fault-agent"
keepalive = %q
reconnect_spread = "0s"
[kaa]
app_version = %q
[agent]
state_dir = "state"
socket = "state/agent.sock"
[[endpoint]]
token = "gw-001"
output = "out/gw-001.json"
`, e.agentPort, o.keepalive, faultApp))
	// A persistent session: confirmations sent while the server is cut off from the broker wait
	// for it there, so the count of confirmations is exact.
	e.server = b.Client(t, mqtttest.WithClientID("fault-server"), mqtttest.WithPersistentSession())
	e.status = e.server.Subscribe(t, e.prefix+"/json/status", 1)
	return e
}

func (e *faultEnv) writeConfig(s string) {
	e.t.Helper()
	if err := os.WriteFile(e.config, []byte(s), 0o600); err != nil {
		e.t.Fatal(err)
	}
}

func (e *faultEnv) mountTmpfs() {
	e.t.Helper()
	if os.Geteuid() != 0 {
		e.t.Skip("disk full: needs root to mount a small tmpfs")
	}
	if err := os.MkdirAll(e.outDir, 0o755); err != nil {
		e.t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", e.outDir, "tmpfs", 0, "size=256k"); err != nil {
		e.t.Skipf("disk full: mount tmpfs: %v", err)
	}
	e.t.Cleanup(func() {
		if err := syscall.Unmount(e.outDir, syscall.MNT_DETACH); err != nil {
			e.t.Errorf("unmount %s: %v", e.outDir, err)
		}
	})
}

// start runs the agent binary and waits until it has connected and asked for its configuration.
func (e *faultEnv) start() {
	e.t.Helper()
	e.restart++
	e.agent = startAgent(e.t, e.config)
	e.agent.waitLineN(e.t, "requested latest configuration", 1)
}

func (e *faultEnv) kill() {
	e.t.Helper()
	if e.agent != nil {
		e.agent.kill(e.t)
		e.agent = nil
	}
}

// push publishes a new configuration at QoS 1; the broker has it when push returns.
func (e *faultEnv) push() int {
	e.t.Helper()
	e.nextID++
	id := e.nextID
	e.server.Publish(e.t, e.prefix+"/json", 1, []byte(fmt.Sprintf(`{"id":%d,"entries":[%d]}`, id, id)))
	e.last = id
	e.pushed = append(e.pushed, id)
	return id
}

func (e *faultEnv) burst(n int) {
	e.t.Helper()
	for range n {
		e.push()
	}
}

// confirmations returns the statuses received so far, by push id.
func (e *faultEnv) confirmations() map[int][]string {
	got := map[int][]string{}
	for _, m := range e.status.All() {
		var c struct {
			ID     int    `json:"id"`
			Status string `json:"status"`
		}
		if json.Unmarshal(m.Payload, &c) == nil {
			got[c.ID] = append(got[c.ID], c.Status)
		}
	}
	return got
}

// losses lists the pushes without a good confirmation: "ok", or "superseded by" a newer id. The
// newest push must be "ok".
func (e *faultEnv) losses() []string {
	got := e.confirmations()
	var lost []string
	for _, id := range e.pushed {
		good := false
		for _, s := range got[id] {
			if s == "ok" {
				good = true
			} else if n, ok := strings.CutPrefix(s, "superseded by "); ok && id != e.last {
				if newer, err := strconv.Atoi(n); err == nil && newer > id {
					good = true
				}
			}
		}
		if !good {
			lost = append(lost, fmt.Sprintf("%d:%q", id, got[id]))
		}
	}
	return lost
}

// settle waits until every push is confirmed and the output holds the newest one, and fails the
// test with what is missing otherwise.
func (e *faultEnv) settle(within time.Duration) {
	e.t.Helper()
	want := fmt.Sprintf("[%d]", e.last)
	var (
		lost []string
		body []byte
		err  error
	)
	testkit.Eventually(e.t, within, func() bool {
		lost = e.losses()
		body, err = os.ReadFile(e.output)
		return len(lost) == 0 && (e.last == 0 || err == nil && string(body) == want)
	}, "settled: %s", func() string {
		return fmt.Sprintf("output = %q (%v), want %q; %d of %d pushes not confirmed: %s",
			body, err, want, len(lost), len(e.pushed), strings.Join(first(lost, 20), " "))
	})
}

func first(s []string, n int) []string { return s[:min(n, len(s))] }

// --- faults. Each leaves the system healthy again, with pushes made before, during and after.

func (e *faultEnv) faultBrokerRestart() {
	e.t.Helper()
	e.faults["broker restart mid-burst"]++
	requested := e.agent.count("requested latest configuration")
	e.burst(10)
	e.broker.Restart(e.t) // pushes 1..10 may be anywhere between broker, agent and disk
	e.burst(10)
	e.agent.waitLineN(e.t, "requested latest configuration", requested+1) // reconnected
}

func (e *faultEnv) faultBrokerFrozen() {
	e.t.Helper()
	e.faults["broker frozen (SIGSTOP)"]++
	lost := e.agent.count("connection to broker lost")
	e.burst(3)
	e.broker.Freeze(e.t)
	// Only keepalive can tell: the socket stays open.
	e.agent.waitLineN(e.t, "connection to broker lost", lost+1)
	requested := e.agent.count("requested latest configuration")
	e.broker.Thaw(e.t)
	e.agent.waitLineN(e.t, "requested latest configuration", requested+1)
	e.burst(3)
}

func (e *faultEnv) faultNetworkCut() {
	e.t.Helper()
	if os.Geteuid() != 0 {
		e.t.Skip("network cut: needs root for nftables")
	}
	if _, err := exec.LookPath("nft"); err != nil {
		e.t.Skip("network cut: nft not installed (apt-get install nftables)")
	}
	e.faults["network cut (nftables)"]++
	lost := e.agent.count("connection to broker lost")
	e.burst(2)
	e.cut()
	e.burst(5) // the broker queues these for the agent's session
	e.agent.waitLineN(e.t, "connection to broker lost", lost+1)
	requested := e.agent.count("requested latest configuration")
	e.heal()
	e.burst(2)
	// Connection attempts during the cut timed out and the backoff grew: this can take a while.
	e.agent.waitLineN(e.t, "requested latest configuration", requested+1)
}

func (e *faultEnv) cut() {
	e.t.Helper()
	e.nftTable = fmt.Sprintf("cmxfault_%d", e.agentPort)
	p := strconv.Itoa(e.agentPort)
	script := "add table inet " + e.nftTable + "\n" +
		"add chain inet " + e.nftTable + " out { type filter hook output priority 0; }\n" +
		"add rule inet " + e.nftTable + " out tcp dport " + p + " drop\n" +
		"add rule inet " + e.nftTable + " out tcp sport " + p + " drop\n"
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		e.t.Fatalf("nft: %v: %s", err, out)
	}
	e.t.Cleanup(e.heal)
}

func (e *faultEnv) heal() {
	if e.nftTable == "" {
		return
	}
	if out, err := exec.Command("nft", "delete", "table", "inet", e.nftTable).CombinedOutput(); err != nil {
		e.t.Errorf("nft delete table: %v: %s", err, out)
	}
	e.nftTable = ""
}

func (e *faultEnv) faultKill() {
	e.t.Helper()
	e.faults["kill -9 with pushes in flight"]++
	received := e.agent.count("configuration received")
	e.burst(1 + rand.IntN(4))
	// Sometimes at once, sometimes once the agent is busy with them.
	if rand.IntN(2) == 0 {
		e.agent.waitLineN(e.t, "configuration received", received+1)
	}
	e.kill()
	e.burst(rand.IntN(3)) // while it is down
	e.start()
}

func (e *faultEnv) faultDiskFull() {
	e.t.Helper()
	e.faults["disk full"]++
	// Pushes still being applied would fail too, correctly, with "write failed": let them finish
	// so that exactly one push meets the full disk.
	e.settle(60 * time.Second)
	filler := filepath.Join(e.outDir, "filler")
	f, err := os.Create(filler)
	if err != nil {
		e.t.Fatal(err)
	}
	_, err = io.Copy(f, io.LimitReader(zeros{}, 1<<30))
	f.Close()
	if err == nil || !strings.Contains(err.Error(), "no space left") {
		e.t.Fatalf("filling the tmpfs: %v, want ENOSPC", err)
	}
	id := e.push()
	e.waitStatus(id, "write failed: ")
	e.pushed = e.pushed[:len(e.pushed)-1] // answered with an error, as it should: not a loss
	if err := os.Remove(filler); err != nil {
		e.t.Fatal(err)
	}
	e.push()
}

// waitStatus waits for a confirmation of id whose status starts with prefix.
func (e *faultEnv) waitStatus(id int, prefix string) {
	e.t.Helper()
	testkit.Eventually(e.t, 30*time.Second, func() bool {
		return slices.ContainsFunc(e.confirmations()[id], func(s string) bool { return strings.HasPrefix(s, prefix) })
	}, "no confirmation of %d starting %q; got %s", id, prefix, func() string { return fmt.Sprintf("%q", e.confirmations()[id]) })
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

func (e *faultEnv) faultCorruptDB() {
	e.t.Helper()
	e.faults["corrupt agent.db"]++
	// What the database held is lost with it: confirmations still in its outbox included. So the
	// damage comes once everything is answered, as after a clean stop; pushes made afterwards, while
	// the agent is down, must still be applied and confirmed.
	e.settle(60 * time.Second)
	e.kill()
	db := filepath.Join(e.state, store.DBName)
	fi, err := os.Stat(db)
	if err != nil {
		e.t.Fatal(err)
	}
	if rand.IntN(2) == 0 {
		// Cut into the third page (meta pages are 0 and 1, 4 KiB each): the freelist and the root
		// bucket are gone. Half the file is not enough: a young database keeps its live pages at the
		// start, and bbolt reads a file cut in its unused tail as whole.
		err = os.Truncate(db, min(fi.Size()-1, 2*4096+100))
	} else {
		err = os.WriteFile(db, []byte("this is not a bbolt file\n"), 0o600)
	}
	if err != nil {
		e.t.Fatal(err)
	}
	e.burst(2)
	e.start()
	e.agent.waitLineN(e.t, "state database was unreadable: moved aside", 1)
}

// --- the tests

func TestFault_BrokerRestartMidBurst(t *testing.T) {
	e := newFaultEnv(t, faultOpts{})
	e.start()
	e.faultBrokerRestart()
	e.settle(60 * time.Second)
}

func TestFault_BrokerFrozenIsDetectedByKeepalive(t *testing.T) {
	e := newFaultEnv(t, faultOpts{})
	e.start()
	e.faultBrokerFrozen()
	e.settle(60 * time.Second)
}

func TestFault_NetworkCutWhileServerKeepsPushing(t *testing.T) {
	e := newFaultEnv(t, faultOpts{})
	e.start()
	e.faultNetworkCut()
	e.settle(60 * time.Second)
}

func TestFault_Kill9LoopWithPushesInFlight(t *testing.T) {
	e := newFaultEnv(t, faultOpts{})
	e.start()
	for range 20 {
		e.faultKill()
	}
	e.settle(90 * time.Second)
	t.Logf("%d pushes, %d agent starts", len(e.pushed), e.restart)
}

func TestFault_DiskFullIsAnErrorStatusThenRecovers(t *testing.T) {
	e := newFaultEnv(t, faultOpts{tmpfsOut: true})
	e.start()
	e.push()
	e.settle(30 * time.Second)
	e.faultDiskFull()
	e.settle(30 * time.Second)
}

func TestFault_CorruptDatabaseIsMovedAsideAndStateRebuilt(t *testing.T) {
	e := newFaultEnv(t, faultOpts{})
	e.start()
	e.burst(3)
	e.faultCorruptDB()
	e.settle(60 * time.Second)
	aside, _ := filepath.Glob(filepath.Join(e.state, store.DBName+".corrupt-*"))
	if len(aside) != 1 {
		t.Errorf("moved-aside files: %q, want one", aside)
	}
	if n := e.agent.count("state database was unreadable"); n != 1 {
		t.Errorf("%d log lines about the damaged database, want 1", n)
	}
}

func TestFault_GarbageConfigAtStartIsExit2AndChangesNothing(t *testing.T) {
	e := newFaultEnv(t, faultOpts{})
	e.start()
	e.burst(2)
	e.settle(30 * time.Second)
	e.kill()
	good, err := os.ReadFile(e.config)
	if err != nil {
		t.Fatal(err)
	}
	for _, garbage := range [][]byte{
		[]byte("\x00\xff\xfe garbage [[[ = \n"),
		good[:len(good)/2],
		[]byte(""),
	} {
		if err := os.WriteFile(e.config, garbage, 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(binary(t), "run", "--config", e.config)
		out, err := cmd.CombinedOutput()
		if cmd.ProcessState == nil || cmd.ProcessState.ExitCode() != 2 {
			t.Errorf("run with config %q: %v, want exit 2\n%s", garbage, err, out)
		}
		if !strings.Contains(string(out), e.config) {
			t.Errorf("output does not name the config file:\n%s", out)
		}
	}
	e.burst(1) // waits at the broker
	e.writeConfig(string(good))
	e.start()
	e.settle(30 * time.Second)
}

func TestFault_GarbageConfigAtReloadKeepsTheAgentRunning(t *testing.T) {
	e := newFaultEnv(t, faultOpts{})
	e.start()
	e.burst(1)
	e.settle(30 * time.Second)
	e.writeConfig("[broker\nservers = 42\n\x00")
	if err := e.agent.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	e.burst(2)
	e.settle(30 * time.Second)
	select {
	case <-e.agent.done:
		t.Fatalf("agent exited after SIGHUP with a garbage config")
	default:
	}
}

// TestSoak runs the faults at random for CMX_SOAK (a duration, e.g. 60s) and prints a table; it
// is skipped when CMX_SOAK is not set. scripts/soak runs it.
func TestSoak(t *testing.T) {
	d, err := time.ParseDuration(os.Getenv("CMX_SOAK"))
	if err != nil || d <= 0 {
		t.Skip("set CMX_SOAK=60s (scripts/soak) to run the soak")
	}
	root := os.Geteuid() == 0
	e := newFaultEnv(t, faultOpts{tmpfsOut: root})
	e.start()
	faults := []func(){e.faultBrokerRestart, e.faultBrokerFrozen, e.faultKill, e.faultCorruptDB}
	if root {
		faults = append(faults, e.faultNetworkCut, e.faultDiskFull)
	}
	start := time.Now()
	for time.Since(start) < d {
		e.burst(rand.IntN(5))
		faults[rand.IntN(len(faults))]()
	}
	e.burst(1)
	e.settle(120 * time.Second)

	var names []string
	for n := range e.faults {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	fmt.Fprintf(&b, "\nsoak: %v, %d agent starts\n%-32s %s\n", time.Since(start).Round(time.Second), e.restart, "fault", "injected")
	for _, n := range names {
		fmt.Fprintf(&b, "%-32s %d\n", n, e.faults[n])
	}
	conf := e.confirmations()
	total := 0
	for _, s := range conf {
		total += len(s)
	}
	fmt.Fprintf(&b, "%-32s %d\n%-32s %d (%d distinct pushes)\n%-32s %d\n", "pushes", len(e.pushed),
		"confirmations", total, len(conf), "losses", len(e.losses()))
	fmt.Print(b.String())
}

// --- process helpers

func (p *proc) count(s string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, l := range p.lines {
		if strings.Contains(l, s) {
			n++
		}
	}
	return n
}

// waitLineN waits until n lines of stderr contain s.
func (p *proc) waitLineN(t *testing.T, s string, n int) {
	t.Helper()
	deadline := time.NewTimer(90 * time.Second)
	defer deadline.Stop()
	for p.count(s) < n {
		select {
		case <-p.added:
		case <-p.done:
			if p.count(s) >= n {
				return
			}
			t.Fatalf("agent exited before logging %q %d times", s, n)
		case <-deadline.C:
			t.Fatalf("agent did not log %q %d times within 90s (%d so far)", s, n, p.count(s))
		}
	}
}
