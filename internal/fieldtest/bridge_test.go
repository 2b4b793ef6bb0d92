package fieldtest

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/cmx-agent/cmx-agent/internal/mqtttest"
)

// The bridge suite: the agent on a gateway-local mosquitto, bridged to a middle broker, bridged to
// the cloud broker; the server only on the cloud broker. Packet ids are rewritten at every hop,
// so what ties a confirmation to its push is the id in the payload and the topic.

const bridgeApp = "bridge-v1"

// bridgeLines is the bridge configuration the suite runs and docs/brokers.md recommends: every
// kp1 topic both ways at QoS 1, a persistent session on the remote broker (QoS 1 messages wait
// there while the link is down), and the bridge announcing itself (try_private) so that the remote
// broker does not send a message back where it came from. Persistence and set_tcp_nodelay are
// global and already in every mqtttest broker's configuration.
func bridgeLines(name string, remote *mqtttest.Broker) []string {
	return []string{
		"connection " + name,
		"address " + remote.Addr,
		"remote_clientid " + name,
		"topic kp1/# both 1",
		"cleansession false",
		"try_private true",
		"bridge_protocol_version mqttv311",
		// Reconnect after 1 s instead of mosquitto's default backoff from 5 s up to 30 s, so that
		// a restart costs the suite one second.
		"restart_timeout 1",
	}
}

// chain is cloud ← middle ← gateway: each broker's bridge connects to the one before it.
type chain struct {
	tb                     testing.TB
	cloud, middle, gateway *mqtttest.Broker
}

func startChain(t *testing.T) *chain {
	t.Helper()
	c := &chain{tb: t, cloud: mqtttest.Start(t)}
	c.middle = mqtttest.StartWith(t, mqtttest.Options{Lines: bridgeLines("middle-to-cloud", c.cloud)})
	c.gateway = mqtttest.StartWith(t, mqtttest.Options{Lines: bridgeLines("gateway-to-middle", c.middle)})
	c.waitBridges(1, 1)
	return c
}

// waitBridges waits until each bridge has subscribed on its remote broker the given number of
// times: from then on, both directions of that hop carry messages.
func (c *chain) waitBridges(middleToCloud, gatewayToMiddle int) {
	c.cloud.WaitLog(c.tb, "Received SUBSCRIBE from middle-to-cloud", middleToCloud, 30*time.Second)
	c.middle.WaitLog(c.tb, "Received SUBSCRIBE from gateway-to-middle", gatewayToMiddle, 30*time.Second)
}

// bridgeSetup is a chain, a server on the cloud broker and one gateway agent on the gateway broker.
func bridgeSetup(t *testing.T, tokens ...string) (*chain, *cloud, *gateway) {
	t.Helper()
	ch := startChain(t)
	srv := newCloud(t, ch.cloud.Client(t), bridgeApp)
	gw := newGateway(t, gatewaySpec{
		servers:  []string{ch.gateway.URL},
		clientID: "gw-agent",
		app:      bridgeApp,
		tokens:   tokens,
	})
	return ch, srv, gw
}

func TestBridge_BootPullAcrossTwoHopsIsAnsweredAndConfirmed(t *testing.T) {
	_, srv, gw := bridgeSetup(t, "gw-001")
	boot := srv.assign("gw-001")
	gw.start()

	pull := srv.pulls.Next(t, 60*time.Second)
	if pull.Topic != srv.prefix("gw-001")+"/pull/json" || pull.QoS != 1 {
		t.Fatalf("pull: %v, want %s/pull/json at QoS 1", pull, srv.prefix("gw-001"))
	}
	var req struct {
		ID json.Number `json:"id"`
	}
	if err := json.Unmarshal(pull.Payload, &req); err != nil {
		t.Fatalf("pull payload %q: %v", pull.Payload, err)
	}
	n, err := strconv.ParseUint(req.ID.String(), 10, 64)
	if err != nil || n == 0 {
		t.Fatalf("pull id %q is not a positive integer", req.ID)
	}
	// The cloud answers at P/json/<pull id>; the confirmation comes back to that topic's /status.
	cf := parseConfirmation(t, srv.withReq.Next(t, 30*time.Second))
	want := confirmation{topic: fmt.Sprintf("%s/json/%d/status", srv.prefix("gw-001"), n), qos: 1,
		id: json.RawMessage(strconv.Itoa(boot.id)), status: "ok"}
	if !sameConfirmation(cf, want) {
		t.Fatalf("confirmation of the boot answer: %+v, want %+v", cf, want)
	}
	body, err := os.ReadFile(gw.output("gw-001"))
	if err != nil || string(body) != boot.body() {
		t.Fatalf("output %q (%v), want %s", body, err, boot.body())
	}
}

func TestBridge_PushAcrossTwoHopsKeepsIdsAndQoS(t *testing.T) {
	_, srv, gw := bridgeSetup(t, "gw-001")
	gw.start()
	srv.waitPulls("gw-001", 1, 60*time.Second) // connected and subscribed; nothing assigned yet
	p := srv.prefix("gw-001")

	for i, tc := range []struct {
		name  string
		topic string // after P
		qos   byte
		id    string // JSON of the push's id; "" = no id
	}{
		{"number id at QoS 1", "/json", 1, "42"},
		{"the same digits as a string are another id", "/json", 1, `"42"`},
		{"number id at QoS 0", "/json", 0, "43"},
		{"string id at QoS 0", "/json", 0, `"cfg 7/b"`},
		{"no id", "/json", 1, ""},
		{"request id topic at QoS 1", "/json/77", 1, `"r-77"`},
		{"request id topic at QoS 0", "/json/78", 0, "9007199254740993"},
		{"large number id kept digit for digit", "/json", 1, "123456789012345678901234567890"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer srv.in(t)()
			entries := fmt.Sprintf(`[{"case":%d}]`, i)
			payload := `{"entries":` + entries + `}`
			if tc.id != "" {
				payload = `{"id":` + tc.id + `,"entries":` + entries + `}`
			}
			srv.publish(p+tc.topic, tc.qos, payload)

			sub := srv.plain
			if tc.topic != "/json" {
				sub = srv.withReq
			}
			m := sub.Next(t, 30*time.Second)
			got := parseConfirmation(t, m)
			want := confirmation{topic: p + tc.topic + "/status", qos: tc.qos, id: json.RawMessage(tc.id), status: "ok"}
			if !sameConfirmation(got, want) {
				t.Fatalf("confirmation %+v, want %+v", got, want)
			}
			body, err := os.ReadFile(gw.output("gw-001"))
			if err != nil || string(body) != entries {
				t.Fatalf("output %q (%v), want %s", body, err, entries)
			}
		})
	}
}

// TestBridge_RestartDuringBurstLosesNothing restarts one hop in the middle of a burst of QoS 1
// pushes. Every broker keeps its sessions on disk and every bridge session is persistent, so each
// push reaches the agent, and each confirmation reaches the cloud, once the hop is back.
func TestBridge_RestartDuringBurstLosesNothing(t *testing.T) {
	for _, hop := range []string{"middle", "gateway"} {
		t.Run("restart of the "+hop+" broker", func(t *testing.T) {
			ch, srv, gw := bridgeSetup(t, "gw-001", "dev-002")
			srv.assign("gw-001")
			srv.assign("dev-002")
			gw.start()
			srv.settle(gw, 60*time.Second)

			for range 10 {
				srv.push("gw-001", 1)
				srv.push("dev-002", 1)
			}
			switch hop {
			case "middle":
				ch.middle.Restart(t)
				ch.waitBridges(2, 2)
			case "gateway":
				pulls := srv.pullsSeen("gw-001")
				ch.gateway.Restart(t)
				ch.waitBridges(1, 2)
				// The agent lost its connection, reconnects and asks for the latest again.
				srv.waitPulls("gw-001", pulls+1, 90*time.Second)
			}
			for range 10 {
				srv.push("gw-001", 1)
				srv.push("dev-002", 1)
			}
			srv.settle(gw, 90*time.Second)
		})
	}
}

func parseConfirmation(t *testing.T, m mqtttest.Message) confirmation {
	t.Helper()
	var p struct {
		ID     *json.RawMessage `json:"id"`
		Status string           `json:"status"`
	}
	if err := json.Unmarshal(m.Payload, &p); err != nil {
		t.Fatalf("confirmation %v is not JSON: %v", m, err)
	}
	cf := confirmation{topic: m.Topic, qos: m.QoS, status: p.Status}
	if p.ID != nil {
		cf.id = *p.ID
	}
	return cf
}

func sameConfirmation(a, b confirmation) bool {
	return a.topic == b.topic && a.qos == b.qos && string(a.id) == string(b.id) && a.status == b.status
}

// TestBridge_RoundTripAcrossTwoHops measures push → confirmation through both hops, one push at a
// time, beside the same agent on the cloud broker directly. mosquitto 2.0 sets TCP_NODELAY
// (set_tcp_nodelay true) on the sockets it accepts but not on a bridge's own outgoing connection,
// so each hop's upstream direction keeps Nagle's algorithm; the figures go to docs/brokers.md.
func TestBridge_RoundTripAcrossTwoHops(t *testing.T) {
	for _, hops := range []string{"direct", "two hops"} {
		t.Run(hops, func(t *testing.T) {
			ch, srv, gw := bridgeSetup(t, "gw-001")
			if hops == "direct" {
				gw = newGateway(t, gatewaySpec{servers: []string{ch.cloud.URL}, clientID: "gw-direct", app: bridgeApp, tokens: []string{"gw-001"}})
			}
			srv.assign("gw-001")
			gw.start()
			srv.settle(gw, 60*time.Second)
			const n = 20
			took := make([]time.Duration, 0, n)
			for range n {
				start := time.Now()
				s := srv.push("gw-001", 1)
				srv.plain.NextMatching(t, 10*time.Second, func(m mqtttest.Message) bool {
					return string(parseConfirmation(t, m).id) == strconv.Itoa(s.id)
				})
				took = append(took, time.Since(start))
			}
			srv.settle(gw, 10*time.Second)
			slices.Sort(took)
			t.Logf("push → confirmation, %s, QoS 1, %d pushes one at a time: median %v, max %v", hops, n, took[n/2], took[n-1])
		})
	}
}
