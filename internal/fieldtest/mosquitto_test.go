package fieldtest

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cmx-agent/cmx-agent/internal/mqtttest"
)

// TestMosquitto_MessageSizeLimitAboveMaxPayloadLetsTheAgentAnswer shows why a broker's message
// size limit belongs a little above the agent's max_payload: a push the agent finds too large is
// answered with an error status, while one the broker finds too large vanishes (mosquitto
// acknowledges it to the publisher and forwards it to nobody), so the server waits for an answer
// that never comes.
func TestMosquitto_MessageSizeLimitAboveMaxPayloadLetsTheAgentAnswer(t *testing.T) {
	b := mqtttest.StartWith(t, mqtttest.Options{Lines: []string{"message_size_limit 4096"}})
	srv, gw, p := limitsSetup(t, b)

	srv.publish(p, 1, big(100, 3000)) // over max_payload, under the broker's limit
	got := parseConfirmation(t, srv.plain.Next(t, 30*time.Second))
	if !strings.HasPrefix(got.status, "invalid payload: payload too large") {
		t.Fatalf("confirmation %+v, want an invalid payload status", got)
	}
	srv.publish(p, 1, big(101, 5000)) // over the broker's limit: acknowledged, then dropped
	srv.plain.None(t, 2*time.Second)

	want := srv.push("gw-001", 1) // the agent is fine and applies the next one
	got = parseConfirmation(t, srv.plain.Next(t, 30*time.Second))
	if string(got.id) != fmt.Sprint(want.id) || got.status != "ok" {
		t.Fatalf("confirmation %+v, want %d ok", got, want.id)
	}
	if body, err := os.ReadFile(gw.output("gw-001")); err != nil || string(body) != want.body() {
		t.Fatalf("output %q (%v), want %s", body, err, want.body())
	}
}

// TestMosquitto_OversizedPushIsAnsweredWithItsID: the contract's confirmation carries the push's
// id, so that a server pushing to P/json (no request id in the topic) can tell which push failed.
func TestMosquitto_OversizedPushIsAnsweredWithItsID(t *testing.T) {
	b := mqtttest.Start(t)
	srv, _, p := limitsSetup(t, b)
	srv.publish(p, 1, big(100, 3000))
	if got := parseConfirmation(t, srv.plain.Next(t, 30*time.Second)); string(got.id) != "100" {
		t.Fatalf("confirmation %+v, want id 100", got)
	}
}

// limitsSetup is an agent with max_payload = 2KiB on broker b, on its configuration after the
// boot pull; p is its push topic.
func limitsSetup(t *testing.T, b *mqtttest.Broker) (srv *cloud, gw *gateway, p string) {
	t.Helper()
	srv = newCloud(t, b.Client(t), bridgeApp)
	gw = newGateway(t, gatewaySpec{servers: []string{b.URL}, clientID: "gw-limits", app: bridgeApp,
		tokens: []string{"gw-001"}, extra: `max_payload = "2KiB"`})
	srv.assign("gw-001")
	gw.start()
	srv.settle(gw, 60*time.Second)
	return srv, gw, srv.prefix("gw-001") + "/json"
}

// big is a push of about size bytes.
func big(id, size int) string {
	return fmt.Sprintf(`{"id":%d,"entries":["%s"]}`, id, strings.Repeat("x", size))
}

// TestMosquitto_FanOutTo1000Endpoints is the RabbitMQ fan-out on one mosquitto (in-flight window
// 20), for comparison in the same run.
func TestMosquitto_FanOutTo1000Endpoints(t *testing.T) {
	b := mqtttest.Start(t)
	tokens := fanOutTokens()
	srv := newCloud(t, b.Client(t), bridgeApp)
	gw := newGateway(t, gatewaySpec{servers: []string{b.URL}, clientID: "gw-fanout", app: bridgeApp, tokens: tokens})
	booted, applied := fanOut(t, srv, gw, tokens)
	t.Logf("fan-out to %d endpoints through mosquitto: agent subscribed and pulled for all in %v; all applied and confirmed %v after the pushes started",
		len(tokens), booted.Round(time.Millisecond), applied.Round(time.Millisecond))
}
