package fieldtest

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/cmx-agent/cmx-agent/engine"
	"github.com/cmx-agent/cmx-agent/internal/mqtttest"
)

// The RabbitMQ suite: the real agent against a 3-node RabbitMQ 3.10 cluster (plugin
// rabbitmq_mqtt) started by scripts/rabbitmq-cluster, with servers listing the three nodes. The
// server publishes on another node than the agent's. Tests share the cluster, so each uses its
// own application version (topics) and client ids, and leaves every node running.

type rabbit struct {
	t      *testing.T // fails the test on errors
	top    *testing.T // the test whose end restarts a killed node
	dir    string
	script string
	urls   []string // tcp://127.0.0.1:PORT of node 1, 2, 3
	ports  []int
}

// needRabbit skips the test unless CMX_RABBITMQ_TEST=1; then a missing cluster fails it.
func needRabbit(t *testing.T) *rabbit {
	t.Helper()
	if os.Getenv("CMX_RABBITMQ_TEST") != "1" {
		t.Skip("set CMX_RABBITMQ_TEST=1 after scripts/rabbitmq-cluster start DIR, with CMX_RABBITMQ_DIR=DIR (default /tmp/cmx-rabbitmq); .ci/run does")
	}
	dir := os.Getenv("CMX_RABBITMQ_DIR")
	if dir == "" {
		dir = "/tmp/cmx-rabbitmq"
	}
	script, err := filepath.Abs("../../scripts/rabbitmq-cluster")
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(dir, "mqtt-ports"))
	if err != nil {
		t.Fatalf("CMX_RABBITMQ_TEST=1 but no cluster: %v (start one with scripts/rabbitmq-cluster start %s)", err, dir)
	}
	r := &rabbit{t: t, top: t, dir: dir, script: script}
	for _, f := range strings.Fields(string(data)) {
		p, err := strconv.Atoi(f)
		if err != nil {
			t.Fatalf("%s/mqtt-ports: %q is not a port", dir, f)
		}
		r.ports = append(r.ports, p)
		r.urls = append(r.urls, "tcp://127.0.0.1:"+f)
	}
	if len(r.urls) != 3 {
		t.Fatalf("%s/mqtt-ports lists %d nodes, want 3", dir, len(r.urls))
	}
	// A test that failed half-way may have left a node down: the next one starts on a whole cluster.
	for n := 1; n <= 3; n++ {
		if !r.accepting(n) {
			t.Logf("node %d is down; starting it", n)
			r.startNode(n)
		}
	}
	return r
}

// in is r for subtest t: its failures are t's, while a killed node still waits for the end of the
// whole test to be started again.
func (r *rabbit) in(t *testing.T) *rabbit {
	c := *r
	c.t = t
	return &c
}

// uniq names this test's topics and clients apart from every other test on the shared cluster,
// across runs too: sessions outlive a test.
func uniq() string {
	return strconv.FormatInt(time.Now().UnixNano()%(1<<40), 36)
}

func (r *rabbit) run(args ...string) string {
	r.t.Helper()
	out, err := exec.Command(r.script, append([]string{args[0], r.dir}, args[1:]...)...).CombinedOutput()
	if err != nil {
		r.t.Fatalf("rabbitmq-cluster %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func (r *rabbit) accepting(n int) bool {
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", r.ports[n-1]), time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// killNode kills node n's Erlang VM with SIGKILL; the test starts it again when it ends, so the
// next test finds three nodes.
func (r *rabbit) killNode(n int) {
	r.t.Helper()
	r.run("kill-node", strconv.Itoa(n))
	top := r.in(r.top) // the cleanup runs after a subtest has ended: it reports to the whole test
	r.top.Cleanup(func() {
		if !top.accepting(n) {
			top.startNode(n)
		}
	})
}

func (r *rabbit) startNode(n int) { r.t.Helper(); r.run("start-node", strconv.Itoa(n)) }

// queueType sets mqtt.durable_queue_type for the sessions made from now on.
func (r *rabbit) queueType(qt string) { r.t.Helper(); r.run("queue-type", qt) }

func (r *rabbit) ctl(n int, args ...string) string {
	r.t.Helper()
	return r.run(append([]string{"ctl", strconv.Itoa(n)}, args...)...)
}

// runningNodes asks node n which cluster nodes are running.
func (r *rabbit) runningNodes(n int) []string {
	r.t.Helper()
	out := r.ctl(n, "cluster_status", "--formatter", "json")
	var st struct {
		Running []string `json:"running_nodes"`
	}
	if err := json.Unmarshal([]byte(jsonPart(out, "{")), &st); err != nil {
		r.t.Fatalf("cluster_status: %v\n%s", err, out)
	}
	slices.Sort(st.Running)
	return st.Running
}

// jsonPart is rabbitmqctl's output from the first start (`{` or `[`) on: it may print lines
// before its JSON. Without one it is all of out, for the decoder to fail on.
func jsonPart(out, start string) string {
	if i := strings.Index(out, start); i >= 0 {
		return out[i:]
	}
	return out
}

// sessionQueue returns the type and arguments of the queue holding clientID's QoS 1 session.
func (r *rabbit) sessionQueue(n int, clientID string) (string, map[string]any) {
	r.t.Helper()
	out := r.ctl(n, "list_queues", "name", "type", "arguments", "--formatter", "json")
	var qs []struct {
		Name string  `json:"name"`
		Type string  `json:"type"`
		Args [][]any `json:"arguments"`
	}
	if err := json.Unmarshal([]byte(jsonPart(out, "[")), &qs); err != nil {
		r.t.Fatalf("list_queues: %v\n%s", err, out)
	}
	for _, q := range qs {
		if q.Name == "mqtt-subscription-"+clientID+"qos1" {
			args := map[string]any{}
			for _, a := range q.Args {
				if len(a) == 3 {
					args[fmt.Sprint(a[0])] = a[2]
				}
			}
			return q.Type, args
		}
	}
	r.t.Fatalf("no session queue for %s among %d queues", clientID, len(qs))
	return "", nil
}

// forgetSession removes clientID's session when the test ends, once the agent is gone (a clean
// session connect deletes it), so that sessions do not pile up on the shared cluster for their
// 24 hours. Deleting a queue with thousands of bindings takes a while before the CONNACK.
func (r *rabbit) forgetSession(clientID string, gw *gateway) {
	r.t.Cleanup(func() {
		gw.kill()
		for n := 1; n <= 3; n++ {
			if !r.accepting(n) {
				continue
			}
			c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(r.urls[n-1]).SetClientID(clientID).
				SetCleanSession(true).SetAutoReconnect(false).SetConnectTimeout(90 * time.Second))
			if tok := c.Connect(); !tok.WaitTimeout(90*time.Second) || tok.Error() != nil {
				r.t.Logf("session %s not removed: %v", clientID, tok.Error())
				return
			}
			c.Disconnect(0)
			return
		}
	})
}

// rabbitSetup is a gateway with endpoints tokens, servers = the three nodes in order, and a cloud
// server on node 3.
func rabbitSetup(t *testing.T, r *rabbit, tokens []string) (*cloud, *gateway, string) {
	t.Helper()
	u := uniq()
	app, clientID := "rmq-"+u, "gw-"+u
	srv := newCloud(t, mqtttest.Dial(t, r.urls[2], mqtttest.WithClientID("cloud-"+u)), app)
	gw := newGateway(t, gatewaySpec{servers: r.urls, clientID: clientID, app: app, tokens: tokens})
	r.forgetSession(clientID, gw)
	return srv, gw, clientID
}

// bootedGateway is rabbitSetup with a configuration assigned to every endpoint, the agent
// started, and every endpoint on its configuration after the boot pull.
func bootedGateway(t *testing.T, r *rabbit, tokens []string) (*cloud, *gateway, string) {
	t.Helper()
	srv, gw, clientID := rabbitSetup(t, r, tokens)
	for _, tok := range tokens {
		srv.assign(tok)
	}
	gw.start()
	srv.settle(gw, 60*time.Second)
	return srv, gw, clientID
}

// gatewayAndChildren is a gateway's own token and those of n devices behind it.
func gatewayAndChildren(n int) []string {
	tokens := []string{"gw-001"}
	for i := 1; i <= n; i++ {
		tokens = append(tokens, fmt.Sprintf("dev-%02d", i))
	}
	return tokens
}

func pushAll(srv *cloud, tokens []string) {
	for _, tok := range tokens {
		srv.push(tok, 1)
	}
}

func TestRabbitMQ_BootPullThenPushesToAGatewayAnd20Children(t *testing.T) {
	r := needRabbit(t)
	r.queueType("quorum")
	tokens := gatewayAndChildren(20)
	srv, gw, _ := bootedGateway(t, r, tokens) // every endpoint pulled and applied its configuration
	if st := gw.waitConnected("", 10*time.Second); st.Server != r.urls[0] {
		t.Fatalf("agent connected to %s, want the first server %s", st.Server, r.urls[0])
	}
	for range 3 {
		pushAll(srv, tokens)
	}
	srv.settle(gw, 60*time.Second)
}

// TestRabbitMQ_QuorumSessionSurvivesANodesDeath is one story in three steps on one agent: the
// node it is connected to dies in the middle of a burst, the agent is stopped and pushed to, the
// dead node comes back.
func TestRabbitMQ_QuorumSessionSurvivesANodesDeath(t *testing.T) {
	r := needRabbit(t)
	r.queueType("quorum")
	tokens := gatewayAndChildren(20)
	srv, gw, clientID := bootedGateway(t, r, tokens)
	gw.waitConnected(r.urls[0], 10*time.Second)
	if typ, _ := r.sessionQueue(2, clientID); typ != "quorum" {
		t.Fatalf("session queue type %q, want quorum", typ)
	}

	t.Run("the node dies during a burst: the agent moves to the next server, pulls and ends on the newest", func(t *testing.T) {
		defer srv.in(t)()
		defer gw.in(t)()
		pulls := srv.pullsSeen("gw-001")
		pushAll(srv, tokens)
		killed := time.Now()
		r.in(t).killNode(1)
		pushAll(srv, tokens) // the server on node 3 retries while the queue elects a leader
		srv.waitPulls("gw-001", pulls+1, 90*time.Second)
		failover := time.Since(killed)
		pushAll(srv, tokens)
		srv.settle(gw, 90*time.Second)
		settled := time.Since(killed)
		if st := gw.waitConnected("", 10*time.Second); st.Server != r.urls[1] {
			t.Fatalf("agent on %s after node 1 died, want the next server %s", st.Server, r.urls[1])
		}
		srv.mu.Lock()
		retries := srv.retries
		srv.mu.Unlock()
		t.Logf("node 1 killed: the agent pulled again from node 2 after %v; all %d endpoints on their newest configuration after %v; the server repeated %d publishes",
			failover.Round(time.Millisecond), len(tokens), settled.Round(time.Millisecond), retries)
		// A quorum session is served by every node: nothing the agent did was a refusal.
		if log, err := os.ReadFile(gw.log); err != nil || strings.Contains(string(log), "the broker refuses") {
			t.Errorf("the agent took the failover for a refused subscription (%v):\n%s", err, tail(gw.log, 40))
		}
	})

	t.Run("pushes made while the agent is stopped wait in its session and are applied without a pull answer", func(t *testing.T) {
		defer srv.in(t)()
		defer gw.in(t)()
		gw.stop()
		srv.mu.Lock()
		srv.silent = true // pulls go unanswered: only the session can bring these pushes
		answered := srv.answers
		srv.mu.Unlock()
		pushAll(srv, tokens)
		gw.start()
		srv.settle(gw, 90*time.Second)
		srv.mu.Lock()
		defer srv.mu.Unlock()
		srv.silent = false
		if srv.answers != answered {
			t.Fatalf("%d pulls answered while the cloud was silent", srv.answers-answered)
		}
	})

	t.Run("the dead node comes back and rejoins; the agent keeps working", func(t *testing.T) {
		defer srv.in(t)()
		defer gw.in(t)()
		r := r.in(t)
		r.startNode(1)
		want := []string{"rabbit1@localhost", "rabbit2@localhost", "rabbit3@localhost"}
		if got := r.runningNodes(2); !slices.Equal(got, want) {
			t.Fatalf("running nodes %q, want %q", got, want)
		}
		pushAll(srv, tokens)
		srv.settle(gw, 60*time.Second)
	})
}

// TestRabbitMQ_ClassicSessionIsRefusedWhileItsHomeNodeIsDown shows what RabbitMQ's default
// (classic session queues) does to a gateway when the node homing its session dies: every other
// node refuses the session's SUBSCRIBE by closing the connection, with a clean session too (its
// queue has the same name), and grants only QoS 0; pushes published while the agent has no
// subscription are acknowledged to the server and dropped, and the agent's pull at connect brings
// the newest configuration.
func TestRabbitMQ_ClassicSessionIsRefusedWhileItsHomeNodeIsDown(t *testing.T) {
	r := needRabbit(t)
	srv, gw, clientID := classicGateway(t, r)
	gw.stop() // so that the probe below is the only client with this id
	r.killNode(1)
	for _, clean := range []bool{false, true} {
		if err := trySubscribe(r.urls[1], clientID, clean, 1); err == nil {
			t.Fatalf("node 2 granted SUBSCRIBE to %s (clean session %v) while its classic queue's home node is down", clientID, clean)
		} else if errors.Is(err, errNoConnect) {
			t.Fatalf("node 2, clean session %v: %v; want a connection refusing the SUBSCRIBE", clean, err)
		} else {
			t.Logf("node 2, clean session %v, QoS 1: %v", clean, err)
		}
	}
	// A QoS 0 subscription lives in another queue (mqtt-subscription-<id>qos0), which node 2 can
	// make: the only subscription this client id can have while node 1 is down.
	if err := trySubscribe(r.urls[1], clientID, true, 0); err != nil {
		t.Fatalf("node 2 refused a QoS 0 subscription of a clean session: %v", err)
	}
	pulls := srv.pullsSeen("gw-001")
	dropped := srv.push("gw-001", 1) // acknowledged by node 3
	gw.start()
	r.startNode(1)
	srv.waitPulls("gw-001", pulls+1, 90*time.Second)
	srv.settle(gw, 60*time.Second)
	// The agent confirms at the topic a configuration came on: only the pull's answer brought it,
	// the session never delivered the push itself.
	if confirmedAsPush(srv, "gw-001", dropped) {
		t.Fatalf("the push made while node 1 was down was delivered by the session: %+v", srv.confirmations())
	}
	t.Logf("node 2 refused the session queue of %s %d times while node 1 was down", clientID, refusals(nodeLog(r, 2), clientID))
}

// TestRabbitMQ_ClassicSessionRefusedIsServedAtQoS0UntilItsNodeReturns is what the agent does when
// its SUBSCRIBE is refused (transport's ladder): RabbitMQ closes the connection instead of a
// SUBACK, for the resumed session and a fresh one alike, so the agent subscribes at QoS 0 on a
// surviving node, pulls, and takes pushes while connected; back on QoS 1 (here by a restart once
// the node has returned, as the probe does 30 s to 30 min later, which transport's tests show),
// pushes made while it is stopped wait in its session again.
func TestRabbitMQ_ClassicSessionRefusedIsServedAtQoS0UntilItsNodeReturns(t *testing.T) {
	r := needRabbit(t)
	srv, gw, clientID := classicGateway(t, r)
	pulls := srv.pullsSeen("gw-001")
	killed := time.Now()
	r.killNode(1)
	srv.push("gw-001", 1) // while the agent has no subscription: dropped, and brought by the pull
	srv.waitPulls("gw-001", pulls+1, 60*time.Second)
	st := gw.waitConnected("", 30*time.Second)
	if !strings.HasPrefix(st.Degraded, "subscribed at QoS 0") || st.Server == r.urls[0] {
		t.Fatalf("status %+v, want connected to a surviving node and degraded to QoS 0", st)
	}
	log := nodeLog(r, 2) + nodeLog(r, 3)
	t.Logf("node 1 killed: the agent pulled at QoS 0 on %s after %v, with %d refused queue declarations on nodes 2 and 3",
		st.Server, time.Since(killed).Round(100*time.Millisecond), refusals(log, clientID))
	srv.settle(gw, 30*time.Second)
	// A push while connected at QoS 0 is delivered as a push and confirmed.
	live := srv.push("gw-001", 1)
	srv.settle(gw, 30*time.Second)
	if !confirmedAsPush(srv, "gw-001", live) {
		t.Errorf("the push made at QoS 0 was not delivered as a push: %+v", srv.confirmations())
	}

	r.startNode(1)
	gw.stop()
	gw.start()
	eventually(t, 60*time.Second, func() (bool, string) {
		st, err := gw.status()
		return err == nil && st.Connected && st.Degraded == "", fmt.Sprintf("status %+v, %v; want connected at QoS 1", st, err)
	})
	srv.settle(gw, 30*time.Second)
	// Back on a persistent QoS 1 session: a push made while the agent is stopped waits for it and
	// is delivered by the session, not by a pull's answer.
	gw.stop()
	queued := srv.push("gw-001", 1)
	gw.start()
	srv.settle(gw, 60*time.Second)
	if !confirmedAsPush(srv, "gw-001", queued) {
		t.Errorf("the push made while the agent was stopped was not delivered by its session: %+v", srv.confirmations())
	}
}

// classicGateway is bootedGateway with one endpoint on a classic session queue; the cluster goes
// back to quorum queues for new sessions when the test ends.
func classicGateway(t *testing.T, r *rabbit) (*cloud, *gateway, string) {
	t.Helper()
	r.queueType("classic")
	t.Cleanup(func() { r.queueType("quorum") })
	srv, gw, clientID := bootedGateway(t, r, []string{"gw-001"})
	if typ, _ := r.sessionQueue(2, clientID); typ != "classic" {
		t.Fatalf("session queue type %q, want classic", typ)
	}
	return srv, gw, clientID
}

// confirmedAsPush reports whether s was confirmed at the push topic, where only the push itself
// is confirmed (a pull's answer comes at P/json/<request id>).
func confirmedAsPush(srv *cloud, token string, s sent) bool {
	for _, cf := range srv.confirmations() {
		if string(cf.id) == strconv.Itoa(s.id) && cf.topic == srv.prefix(token)+"/json/status" {
			return true
		}
	}
	return false
}

// errNoConnect is a trySubscribe that never got as far as the SUBSCRIBE: no refusal.
var errNoConnect = errors.New("connect failed")

// trySubscribe connects as clientID to url and subscribes at qos. RabbitMQ answers a refused
// queue declaration by closing the connection, without a SUBACK.
func trySubscribe(url, clientID string, clean bool, qos byte) error {
	lost := make(chan error, 1)
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(url).SetClientID(clientID).
		SetCleanSession(clean).SetAutoReconnect(false).SetConnectTimeout(10 * time.Second).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) { lost <- err }))
	if tok := c.Connect(); !tok.WaitTimeout(10 * time.Second) {
		return fmt.Errorf("%w: no CONNACK within 10s", errNoConnect)
	} else if tok.Error() != nil {
		return fmt.Errorf("%w: %v", errNoConnect, tok.Error())
	}
	defer c.Disconnect(0)
	tok := c.Subscribe("kp1/probe/+", qos, nil)
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			return fmt.Errorf("subscribe: %w", err)
		}
		if code := tok.(*mqtt.SubscribeToken).Result()["kp1/probe/+"]; code == 0x80 {
			return errors.New("SUBACK 0x80 (refused)")
		}
		return nil
	case err := <-lost:
		return fmt.Errorf("connection closed before the SUBACK: %w", err)
	case <-time.After(10 * time.Second):
		return errors.New("no SUBACK within 10s")
	}
}

// refusals counts the queue declarations of clientID's session that a node's log shows refused.
func refusals(log, clientID string) int {
	n := 0
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, "operation queue.declare caused a channel exception not_found") &&
			strings.Contains(line, "'mqtt-subscription-"+clientID+"qos1'") {
			n++
		}
	}
	return n
}

func nodeLog(r *rabbit, n int) string {
	data, err := os.ReadFile(filepath.Join(r.dir, fmt.Sprintf("rabbit%d", n), "log", fmt.Sprintf("rabbit%d@localhost.log", n)))
	if err != nil {
		r.t.Errorf("node %d's log: %v", n, err)
	}
	return string(data)
}

func TestRabbitMQ_FanOutTo1000EndpointsWithAnInFlightWindowOf10(t *testing.T) {
	r := needRabbit(t)
	r.queueType("quorum")
	tokens := fanOutTokens()
	srv, gw, _ := rabbitSetup(t, r, tokens)
	booted, applied := fanOut(t, srv, gw, tokens)
	t.Logf("fan-out to %d endpoints through RabbitMQ (quorum session, prefetch 10): agent subscribed and pulled for all in %v; all applied and confirmed %v after the pushes started",
		len(tokens), booted.Round(time.Millisecond), applied.Round(time.Millisecond))
}

func fanOutTokens() []string {
	tokens := make([]string, 1000)
	for i := range tokens {
		tokens[i] = fmt.Sprintf("fan-%04d", i+1)
	}
	return tokens
}

// fanOut starts the agent, waits for its pull of every endpoint (nothing is assigned), pushes to
// every endpoint at once and waits until all are applied and confirmed. It returns how long the
// start took until the last pull, and the pushes until the last confirmation.
func fanOut(t *testing.T, srv *cloud, gw *gateway, tokens []string) (booted, applied time.Duration) {
	t.Helper()
	started := time.Now()
	gw.start()
	// On RabbitMQ the one SUBSCRIBE of 2,000 filters alone took up to a minute on a loaded machine.
	eventually(t, 240*time.Second, func() (bool, string) {
		n := len(srv.pulls.All())
		return n >= len(tokens), fmt.Sprintf("%d of %d endpoints pulled", n, len(tokens))
	})
	booted = time.Since(started)
	start := time.Now()
	// From 20 publishers at once: one publisher waiting for each PUBACK (a quorum queue confirms
	// after a majority wrote it) would measure the server, not the agent.
	srv.pushParallel(tokens, 20)
	srv.settle(gw, 180*time.Second)
	return booted, time.Since(start)
}

// TestRabbitMQ_DifferencesFromMosquitto pins the behaviours docs/brokers.md warns about.
func TestRabbitMQ_DifferencesFromMosquitto(t *testing.T) {
	r := needRabbit(t)
	u := uniq()
	n1 := mqtttest.Dial(t, r.urls[0], mqtttest.WithClientID("diff1-"+u))
	n2 := mqtttest.Dial(t, r.urls[1], mqtttest.WithClientID("diff2-"+u))
	p := "kp1/rmq-" + u + "/cmx/"

	t.Run("a topic level with a dot comes back as two levels and misses a + filter", func(t *testing.T) {
		exact := mqtttest.Dial(t, r.urls[0])
		exact.Subscribe(t, p+"a.b/json", 1)
		plus := mqtttest.Dial(t, r.urls[0]).Subscribe(t, p+"+/json", 1)
		n2.Publish(t, p+"a.b/json", 1, []byte(`{"id":1,"entries":[]}`))
		// The inbox: the client's own filter matching would not recognise the topic it is given.
		if m := exact.Inbox().Next(t, 10*time.Second); m.Topic != p+"a/b/json" {
			t.Fatalf("delivered topic %q, want %q (RabbitMQ maps / to . and back)", m.Topic, p+"a/b/json")
		}
		plus.None(t, time.Second)
	})
	t.Run("retained messages are kept per node", func(t *testing.T) {
		n1.PublishRetained(t, p+"retained", 1, []byte("kept on node 1"))
		if m := mqtttest.Dial(t, r.urls[0]).Subscribe(t, p+"retained", 1).Next(t, 10*time.Second); string(m.Payload) != "kept on node 1" {
			t.Fatalf("node 1 gave %v", m)
		}
		mqtttest.Dial(t, r.urls[1]).Subscribe(t, p+"retained", 1).None(t, time.Second)
		n1.PublishRetained(t, p+"retained", 1, nil) // clears it
	})
	t.Run("$share is granted and delivers nothing", func(t *testing.T) {
		shared := mqtttest.Dial(t, r.urls[0]).Subscribe(t, "$share/cloud/"+p+"shared", 1)
		n2.Publish(t, p+"shared", 1, []byte("to the group"))
		shared.None(t, 2*time.Second)
	})
	t.Run("QoS 2 is delivered as QoS 1", func(t *testing.T) {
		sub := mqtttest.Dial(t, r.urls[0]).Subscribe(t, p+"qos2", 2)
		n2.Publish(t, p+"qos2", 2, []byte("exactly once?"))
		if m := sub.Next(t, 10*time.Second); m.QoS != 1 {
			t.Fatalf("delivered at QoS %d, want 1", m.QoS)
		}
	})
	t.Run("a session expires after 24 h unused", func(t *testing.T) {
		id := "diff-session-" + u
		c := mqtttest.Dial(t, r.urls[0], mqtttest.WithClientID(id), mqtttest.WithPersistentSession())
		c.Subscribe(t, p+"session", 1)
		_, args := r.in(t).sessionQueue(1, id)
		if got, ok := args["x-expires"].(float64); !ok || got != 24*3600*1000 {
			t.Fatalf("session queue x-expires = %v, want 86400000 ms", args["x-expires"])
		}
		c.Disconnect(t)
		mqtttest.Dial(t, r.urls[0], mqtttest.WithClientID(id)).Disconnect(t) // a clean session removes it
	})
}

// TestRabbitMQ_AnAnswerItsTopicPermissionsRefuseIsSetAsideAndTheOtherEndpointsWork: RabbitMQ
// answers a publish its topic permissions refuse by closing the connection (MQTT 3.1.1 has no
// negative PUBACK). The agent sets such an answer aside after engine.PoisonCloses closes, instead
// of losing every connection to it, and the other endpoint's pushes are confirmed.
func TestRabbitMQ_AnAnswerItsTopicPermissionsRefuseIsSetAsideAndTheOtherEndpointsWork(t *testing.T) {
	r := needRabbit(t)
	r.queueType("quorum")
	u := uniq()
	app, clientID, user := "rmq-"+u, "gw-"+u, "cmx-"+u
	r.ctl(1, "add_user", user, "pw-"+u)
	t.Cleanup(func() { r.ctl(1, "delete_user", user) })
	r.ctl(1, "set_permissions", "-p", "/", user, ".*", ".*", ".*")
	// Routing keys have "." for "/": every confirmation of endpoint "bad" is refused, the rest
	// allowed.
	r.ctl(1, "set_topic_permissions", "-p", "/", user, "amq.topic", `^(?!kp1\.`+regexp.QuoteMeta(app)+`\.cmx\.bad\.json\.(.*\.)?status$).*`, ".*")
	srv := newCloud(t, mqtttest.Dial(t, r.urls[2], mqtttest.WithClientID("cloud-"+u)), app)
	gw := newGateway(t, gatewaySpec{servers: r.urls, clientID: clientID, app: app, tokens: []string{"bad", "good"}, username: user, password: "pw-" + u})
	r.forgetSession(clientID, gw)
	srv.assign("bad")
	srv.assign("good")
	refused := func() int {
		n := 0
		for node := 1; node <= 3; node++ {
			n += strings.Count(nodeLog(r, node), "refused for user '"+user+"'")
		}
		return n
	}
	started := time.Now()
	gw.start()

	// The boot pulls are answered; "bad" applies its configuration but its confirmation costs the
	// connection each time it is published, until it is set aside.
	eventually(t, 90*time.Second, func() (bool, string) {
		log, _ := os.ReadFile(gw.log)
		return strings.Contains(string(log), "an answer was set aside"), fmt.Sprintf("%d refused publishes; agent log:\n%s", refused(), tail(gw.log, 20))
	})
	setAside := time.Since(started)
	// The node writes its log a moment later.
	eventually(t, 10*time.Second, func() (bool, string) {
		return refused() >= engine.PoisonCloses, fmt.Sprintf("RabbitMQ logged %d refused publishes, want %d", refused(), engine.PoisonCloses)
	})
	for range 3 {
		srv.push("good", 1)
	}
	eventually(t, 60*time.Second, func() (bool, string) {
		var lost []string
		for _, l := range srv.losses() {
			if strings.HasPrefix(l, "good/") {
				lost = append(lost, l)
			}
		}
		body, _ := os.ReadFile(gw.output("good"))
		srv.mu.Lock()
		want := srv.latest["good"].body()
		srv.mu.Unlock()
		return len(lost) == 0 && string(body) == want, fmt.Sprintf("good: unconfirmed %v, output %q want %s", lost, body, want)
	})
	if body, err := os.ReadFile(gw.output("bad")); err != nil || string(body) != "[1]" {
		t.Errorf("bad's output %q (%v), want [1]: applied, only its confirmation is refused", body, err)
	}
	log, _ := os.ReadFile(gw.log)
	if n, lost := refused(), strings.Count(string(log), "connection to broker lost"); n != engine.PoisonCloses || lost != n {
		t.Errorf("RabbitMQ refused %d publishes and the agent lost %d connections, want %d of each", n, lost, engine.PoisonCloses)
	}
	st := gw.waitConnected("", 10*time.Second)
	for _, ep := range st.Endpoints {
		if ep.Token == "bad" && ep.Pending == 0 {
			t.Errorf("status shows nothing pending for bad: its confirmation must be kept")
		}
	}
	t.Logf("the refused confirmation was set aside %v after the agent started, after %d closed connections", setAside.Round(time.Millisecond), engine.PoisonCloses)
}
