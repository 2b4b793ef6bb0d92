package agent

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cmx-agent/cmx-agent/internal/mqtttest"
)

// The mosquitto ACL of docs/security.md, on a real broker: it is enough for a gateway to work, and
// it keeps a gateway out of another one's topics.
func aclBroker(t *testing.T) (*mqtttest.Broker, string, string) {
	t.Helper()
	dir := t.TempDir()
	pwfile := filepath.Join(dir, "passwd")
	for i, user := range []string{"gw-001", "gw-002"} {
		args := []string{"-b", pwfile, user, "pw-" + user}
		if i == 0 {
			args = append([]string{"-c"}, args...)
		}
		if out, err := exec.Command("mosquitto_passwd", args...).CombinedOutput(); err != nil {
			t.Fatalf("mosquitto_passwd: %v: %s", err, out)
		}
	}
	acl := filepath.Join(dir, "acl")
	err := os.WriteFile(acl, []byte(`pattern read  kp1/+/cmx/%u/json
pattern read  kp1/+/cmx/%u/json/+
pattern write kp1/+/cmx/%u/json/status
pattern write kp1/+/cmx/%u/json/+/status
pattern write kp1/+/cmx/%u/pull/json
pattern readwrite kp1/+/cmx/%u/config/json/#
pattern write     kp1/+/cmx/%u/applied/json/#
`), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	b := mqtttest.StartWith(t, mqtttest.Options{Listeners: []mqtttest.Listener{{Lines: []string{"password_file " + pwfile, "acl_file " + acl}}}})
	return b, fmt.Sprintf("tcp://127.0.0.1:%d", b.Ports[0]), dir
}

func TestACL_PatternACLIsEnoughForItsOwnToken(t *testing.T) {
	b, url, _ := aclBroker(t)
	pw := writeSecret(t, "pw-gw-001\n", 0o600)
	h := newHarnessOn(t, b, fmt.Sprintf("servers = [%q]\nusername = \"gw-001\"\npassword_file = %q", url, pw))
	h.start()
	h.pulled("gw-001")
	h.pushAndConfirm("gw-001", "acl", `["own"]`)
}

func TestACL_AnotherGatewaysTokenIsRefused(t *testing.T) {
	b, url, _ := aclBroker(t)
	pw := writeSecret(t, "pw-gw-002\n", 0o600)
	// gw-002's credentials, gw-001's token. mosquitto 2.0 grants the subscription but delivers
	// nothing the ACL does not allow, and drops what the gateway may not publish.
	h := newHarnessOn(t, b, fmt.Sprintf("servers = [%q]\nusername = \"gw-002\"\npassword_file = %q", url, pw))
	statuses := h.server.Subscribe(t, "kp1/+/cmx/+/json/status", 1)
	h.start()
	h.waitLog("requested latest configuration", 1)
	b.WaitLog(t, "Denied PUBLISH from "+h.clientID(), 1, waitFor)
	h.server.Publish(t, h.prefix("gw-001")+"/json", 1, []byte(`{"id":1,"entries":["stolen"]}`))
	statuses.None(t, 2*time.Second)
	if _, err := os.Stat(h.output("gw-001")); !os.IsNotExist(err) {
		t.Errorf("output written through another gateway's credentials: %v", err)
	}
	for _, m := range h.all.All() {
		if strings.HasSuffix(m.Topic, "/pull/json") {
			t.Errorf("the broker passed on a pull it should have denied: %v", m)
		}
	}
}
