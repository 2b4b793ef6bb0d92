package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cmx-agent/cmx-agent/cmx"
	"github.com/cmx-agent/cmx-agent/config"
	"github.com/cmx-agent/cmx-agent/engine"
	"github.com/cmx-agent/cmx-agent/internal/mqtttest"
	"github.com/cmx-agent/cmx-agent/internal/testkit"
	"github.com/cmx-agent/cmx-agent/store"
	"github.com/cmx-agent/cmx-agent/transport"
)

func (h *harness) api() *APIClient { return NewAPIClient(h.cfg.Agent.Socket) }

// waitStatus polls GET /v1/status until ok accepts it.
func (h *harness) waitStatus(ok func(Status) bool) Status {
	h.t.Helper()
	var (
		st  Status
		err error
	)
	testkit.Eventually(h.t, waitFor, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		st, err = h.api().Status(ctx)
		return err == nil && ok(st)
	}, "status never as wanted: last %s", func() string { return fmt.Sprintf("%+v (err %v)", st, err) })
	return st
}

func TestAPI_StatusReportsConnectionAppliedIDAndPending(t *testing.T) {
	h := newHarness(t, "gw-001", "dev-2")
	h.start()
	h.pulled("gw-001")
	st := h.waitStatus(func(s Status) bool { return s.Connected })
	if st.Server != h.broker.URL || st.Dialect != "cmx3" || len(st.Endpoints) != 2 {
		t.Fatalf("status = %+v, want connected to %s, cmx3, 2 endpoints", st, h.broker.URL)
	}
	if st.Endpoints[0].Key != "dev-2" || st.Endpoints[1].Key != "gw-001" {
		t.Errorf("endpoints %q, %q: want sorted by key", st.Endpoints[0].Key, st.Endpoints[1].Key)
	}
	if st.Endpoints[1].Applied || st.Endpoints[1].AppliedID != "" {
		t.Errorf("before any push: %+v, want nothing applied", st.Endpoints[1])
	}

	topic := h.prefix("gw-001") + "/json"
	h.server.Publish(t, topic, 1, []byte(`{"id":"cfg-9","entries":[1]}`))
	h.confirmed(topic + "/status")
	st = h.waitStatus(func(s Status) bool { return s.Endpoints[1].Pending == 0 && s.Endpoints[1].Applied })
	gw := st.Endpoints[1]
	if gw.AppliedID != "cfg-9" || gw.LastStatus != "ok" || !gw.LastOK || gw.Waiting || gw.AppliedAt.IsZero() {
		t.Errorf("gw-001 = %+v, want applied cfg-9, last status ok, nothing waiting", gw)
	}
	if gw.Output != h.output("gw-001") {
		t.Errorf("output = %q, want %q", gw.Output, h.output("gw-001"))
	}
	if got := StatusLine(st); got != "connected to "+h.broker.URL+"; 1/2 endpoints applied, latest gw-001 cfg-9" {
		t.Errorf("StatusLine = %q", got)
	}

	h.broker.Stop(t)
	st = h.waitStatus(func(s Status) bool { return !s.Connected })
	if st.Server != "" || st.Endpoints[1].AppliedID != "cfg-9" {
		t.Errorf("offline status = %+v, want no server and the applied id kept", st)
	}
}

func TestAPI_PendingCountsUnsentConfirmations(t *testing.T) {
	h := newHarness(t)
	h.start()
	h.pulled("gw-001")
	h.stop()
	// An answer stored but never acknowledged (as after a crash before PUBACK) shows as pending.
	if err := h.agentStore(func(tx *store.Tx) error {
		return tx.PutOutbox(store.OutMsg{Seq: 1, Endpoint: "gw-001", Topic: h.prefix("gw-001") + "/json/status", QoS: 1, Payload: []byte(`{"id":1,"status":"ok"}`)})
	}); err != nil {
		t.Fatal(err)
	}
	h.broker.Stop(t)
	h.start()
	st := h.waitStatus(func(Status) bool { return true })
	if st.Connected || st.Endpoints[0].Pending != 1 {
		t.Errorf("status = %+v, want disconnected with 1 pending confirmation", st)
	}
	if got := StatusLine(st); got != "not connected; nothing applied yet" {
		t.Errorf("StatusLine = %q", got)
	}
}

// agentStore opens the stopped agent's database for a test to prepare state.
func (h *harness) agentStore(fn func(*store.Tx) error) error {
	st, err := store.OpenStore(h.cfg.Agent.StateDir, time.Second, 0)
	if err != nil {
		return err
	}
	defer st.Close()
	return st.Update(fn)
}

func TestAPI_SyncRequestsTheLatestConfigurationNow(t *testing.T) {
	h := newHarness(t, "gw-001", "dev-2")
	h.start()
	h.waitStatus(func(s Status) bool { return s.Connected })
	res, err := h.api().Sync(context.Background())
	if err != nil || res.Requested != 2 {
		t.Fatalf("Sync = %+v, %v; want 2 endpoints requested", res, err)
	}
	// A fresh database hands out ids 1 and 2 to the boot pulls; the sync asks again with new ones.
	// Each token is looked for with its own cursor, as they may arrive in any order.
	for sub, tok := range map[*mqtttest.Sub]string{h.all: "gw-001", h.server.Inbox(): "dev-2"} {
		sub.NextMatching(t, waitFor, func(m mqtttest.Message) bool {
			id, err := cmx.ParsePullRequest(m.Payload)
			return m.Topic == h.prefix(tok)+"/pull/json" && err == nil && id > 2
		})
	}
}

func TestAPI_SyncWhileOfflineIsRefused(t *testing.T) {
	h := newHarness(t)
	h.broker.Stop(t)
	h.start()
	// The socket appears shortly after Run starts.
	var err error
	testkit.Eventually(t, waitFor, func() bool {
		_, err = h.api().Sync(context.Background())
		return err == nil || isAPIError(err, 503)
	}, "Sync offline: %s, want an answer", func() string { return fmt.Sprint(err) })
	if !isAPIError(err, 503) || !strings.Contains(err.Error(), "not connected") {
		t.Fatalf("Sync offline: %v, want 503 not connected", err)
	}
}

func isAPIError(err error, code int) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.Code == code
}

func TestAPI_SocketIsGroupOnlyAndRemovedOnStop(t *testing.T) {
	h := newHarness(t)
	h.start()
	h.waitStatus(func(Status) bool { return true })
	fi, err := os.Lstat(h.cfg.Agent.Socket)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o660 {
		t.Errorf("socket mode = %v, want a socket with 0660", fi.Mode())
	}
	if _, err := os.Lstat(socketTempName(h.cfg.Agent.Socket)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temporary socket %s: %v, want none left", socketTempName(h.cfg.Agent.Socket), err)
	}
	h.stop()
	if _, err := os.Lstat(h.cfg.Agent.Socket); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket after stop: %v, want removed", err)
	}
	if _, err := h.api().Status(context.Background()); err == nil || !strings.Contains(err.Error(), "no agent answers") {
		t.Errorf("Status with no agent: %v, want 'no agent answers'", err)
	}
}

func TestAPI_StaleSocketIsReplaced(t *testing.T) {
	h := newHarness(t)
	// A socket left by a killed agent: nobody answers on it.
	if err := os.MkdirAll(filepath.Dir(h.cfg.Agent.Socket), 0o700); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", h.cfg.Agent.Socket)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	h.start()
	h.waitStatus(func(Status) bool { return true })
}

// What sits at the socket's path and is not a socket is someone's file: the agent neither replaces
// it when it starts nor removes it when it stops, and goes on without its API.
func TestAPI_SocketPathHoldingOtherThanASocketIsLeftAlone(t *testing.T) {
	cases := []struct {
		name  string
		place func(t *testing.T, path string)
	}{
		{"regular file", func(t *testing.T, path string) {
			if err := os.WriteFile(path, []byte("someone's data\n"), 0o640); err != nil {
				t.Fatal(err)
			}
		}},
		{"symbolic link", func(t *testing.T, path string) {
			if err := os.Symlink("elsewhere", path); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t)
			path := h.cfg.Agent.Socket
			if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
				t.Fatal(err)
			}
			c.place(t, path)
			before, err := os.Lstat(path)
			if err != nil {
				t.Fatal(err)
			}
			h.start()
			h.pulled("gw-001") // the agent goes on without its API
			h.waitLog("not a socket", 1)
			h.stop()
			after, err := os.Lstat(path)
			if err != nil || !os.SameFile(before, after) || after.Mode() != before.Mode() {
				t.Fatalf("after the agent ran: %v (err %v), want the %s left as it was (%v)", after, err, c.name, before.Mode())
			}
			if c.name == "regular file" {
				if b, err := os.ReadFile(path); err != nil || string(b) != "someone's data\n" {
					t.Errorf("file holds %q (err %v), want its bytes kept", b, err)
				}
			}
		})
	}
}

func TestOnChange_CalledOnConnectAndApply(t *testing.T) {
	h := newHarness(t)
	var calls atomic.Int32
	h.onChange = func() { calls.Add(1) }
	h.start()
	h.pulled("gw-001")
	h.waitStatus(func(s Status) bool { return s.Connected })
	afterConnect := calls.Load()
	if afterConnect < 1 {
		t.Fatalf("OnChange calls after connect = %d, want >= 1", afterConnect)
	}
	topic := h.prefix("gw-001") + "/json"
	h.server.Publish(t, topic, 1, []byte(`{"id":1,"entries":[]}`))
	h.confirmed(topic + "/status")
	testkit.Eventually(t, waitFor, func() bool { return calls.Load() > afterConnect }, "OnChange not called after apply")
}

func TestStatus_DegradedSaysWhatTheBrokerDidNotGrant(t *testing.T) {
	retry := time.Date(2026, 12, 1, 23, 0, 0, 0, time.UTC)
	cases := []struct {
		name string
		c    transport.ConnState
		want []string // substrings, in order; none: ""
	}{
		{"all granted", transport.ConnState{Connected: true, QoS: 1}, nil},
		{"disconnected", transport.ConnState{QoS: 0, QoS1RetryAt: retry}, nil},
		{"QoS 1 refused", transport.ConnState{Connected: true, QoS: 0, QoS1RetryAt: retry},
			[]string{"subscribed at QoS 0: the broker refuses this client id a QoS 1 subscription", "tried again at 2026-12-01T23:00:00Z"}},
		{"QoS 0 granted only", transport.ConnState{Connected: true, QoS: 0}, []string{"subscribed at QoS 0: the broker grants no more"}},
		{"a topic refused", transport.ConnState{Connected: true, QoS: 1, RefusedFilters: []string{"kp1/v1/cmx/gw-9/json"}},
			[]string{"the broker refused the subscription to kp1/v1/cmx/gw-9/json (its ACL?)"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := degraded(c.c)
			if len(c.want) == 0 {
				if got != "" {
					t.Errorf("degraded %q, want none", got)
				}
				return
			}
			rest := got
			for _, w := range c.want {
				i := strings.Index(rest, w)
				if i < 0 {
					t.Fatalf("degraded %q lacks %q", got, w)
				}
				rest = rest[i+len(w):]
			}
		})
	}
}

// A socket path of 105 bytes, the most config accepts, is served: the temporary name it is bound
// under first fits too (it was the path plus ".tmp" and the process id, up to 11 bytes more, which
// a path config accepted could not bind).
func TestAPI_SocketPathOfTheMostConfigAcceptsIsServed(t *testing.T) {
	dir := t.TempDir()
	const base = "agent.sock"
	pad := 105 - len(dir) - 2 - len(base)
	if pad < 1 {
		t.Skipf("temp folder %s leaves no room for a 105-byte path", dir)
	}
	path := filepath.Join(dir, strings.Repeat("d", pad), base)
	if len(path) != 105 {
		t.Fatalf("path of %d bytes, want 105", len(path))
	}
	if _, err := config.Parse(filepath.Join(dir, "agent.toml"), []byte("[broker]\nservers = [\"tcp://127.0.0.1:1\"]\n[kaa]\napp_version = \"v1\"\n[agent]\nsocket = \""+path+"\"\n[[endpoint]]\ntoken = \"gw\"\noutput = \"o\"\n")); err != nil {
		t.Fatalf("config refuses the 105-byte socket path: %v", err)
	}
	ln, err := listenSocket(path)
	if err != nil {
		t.Fatalf("listenSocket(105 bytes): %v", err)
	}
	defer ln.Close()
	fi, err := os.Stat(path)
	if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o660 {
		t.Fatalf("socket at the path: %v, %v; want a socket with mode 0660", fi, err)
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("connect to the socket: %v", err)
	}
	c.Close()
}

// A CLI call holds none of the API socket's connection slots once answered: more calls in a row
// than the cap all succeed (a kept-alive connection would hold its slot until the idle timeout).
func TestAPIClient_CallsInARowBeyondTheConnectionCapAllSucceed(t *testing.T) {
	h := newHarness(t)
	h.start()
	h.waitStatus(func(Status) bool { return true })
	n := apiConnLimits().maxConns + 8
	for i := range n {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := h.api().Status(ctx)
		cancel()
		if err != nil {
			t.Fatalf("call %d of %d: %v", i+1, n, err)
		}
	}
}

// GET /v1/history lists the applied configurations per endpoint, newest first, with how each
// came; ?endpoint=KEY only that endpoint's, and an unknown key is a 404 naming the endpoints.
func TestAPI_HistoryListsAppliedConfigurationsPerEndpoint(t *testing.T) {
	h := newHarness(t, "gw-001", "dev-2")
	h.start()
	pull := h.pulled("gw-001")
	h.waitStatus(func(s Status) bool { return s.Connected })
	topic := h.prefix("gw-001") + "/json"
	h.server.Publish(t, topic, 1, []byte(`{"id":"a","entries":[1]}`))
	h.confirmed(topic + "/status")
	answer := fmt.Sprintf("%s/%d", topic, pull)
	h.server.Publish(t, answer, 1, []byte(`{"id":"b","entries":[2]}`))
	h.confirmed(answer + "/status")
	h.waitCounters("gw-001", func(e engine.EndpointStats) bool { return e.Ok == 2 })

	ctx := context.Background()
	all, err := h.api().History(ctx, "")
	if err != nil || len(all.Endpoints) != 2 || all.Endpoints[0].Key != "dev-2" || len(all.Endpoints[0].Entries) != 0 {
		t.Fatalf("History() = %+v, %v; want dev-2 with nothing, then gw-001", all, err)
	}
	gw := all.Endpoints[1]
	var got []string
	for _, e := range gw.Entries {
		got = append(got, e.ID+" "+e.Origin.String()+" "+e.SHA256)
	}
	want := []string{"b pull " + sha256Hex("[2]"), "a push " + sha256Hex("[1]")}
	if !slices.Equal(got, want) {
		t.Errorf("gw-001 history %q, want %q", got, want)
	}
	one, err := h.api().History(ctx, "gw-001")
	if err != nil || len(one.Endpoints) != 1 || one.Endpoints[0].Key != "gw-001" || len(one.Endpoints[0].Entries) != 2 {
		t.Errorf("History(gw-001) = %+v, %v; want gw-001's 2 entries only", one, err)
	}
	_, err = h.api().History(ctx, "nope")
	if !isAPIError(err, 404) || err.Error() != `no endpoint "nope" (endpoints: dev-2, gw-001)` {
		t.Errorf("History(nope) = %v, want 404 naming the endpoints", err)
	}
}

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}
