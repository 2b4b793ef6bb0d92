package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// The sections every valid file needs; cases add to them.
const (
	kaaOK      = "[kaa]\napp_version = \"app-v1\"\n"
	endpointOK = "[[endpoint]]\ntoken = \"gw-001\"\noutput = \"out/gw-001.json\"\n"
)

// writeConfig writes src as agent.toml in a fresh folder, replacing $DIR with
// that folder, next to a few files that cases point at: cert.pem, key.pem,
// secret, tpl.tmpl (all readable) and adir (a folder).
func writeConfig(t *testing.T, src string) string {
	t.Helper()
	dir := t.TempDir()
	for _, f := range []string{"cert.pem", "key.pem", "secret", "tpl.tmpl"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("x\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "adir"), 0o700); err != nil {
		t.Fatal(err)
	}
	// Programs for validate and hook: one that runs, one without an execute bit.
	if err := os.Mkdir(filepath.Join(dir, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, mode := range map[string]os.FileMode{"ok.sh": 0o755, "noexec.sh": 0o644} {
		if err := os.WriteFile(filepath.Join(dir, "bin", name), []byte("#!/bin/sh\n"), mode); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(dir, "agent.toml")
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(src, "$DIR", dir)), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func mustLoad(t *testing.T, path string) *Config {
	t.Helper()
	cfg, err := Load(path)
	if err != nil {
		t.Fatalf("Load(%s) failed:\n%v", path, err)
	}
	return cfg
}

func loadProblems(t *testing.T, path string) Problems {
	t.Helper()
	cfg, err := Load(path)
	if err == nil {
		t.Fatalf("Load(%s) = %+v, want problems", path, cfg)
	}
	if cfg != nil {
		t.Errorf("Load returned a config along with problems")
	}
	var ps Problems
	if !errors.As(err, &ps) {
		t.Fatalf("Load error %T (%v) is not Problems", err, err)
	}
	if len(ps) == 0 {
		t.Fatal("Load returned empty Problems as an error")
	}
	return ps
}

// markedLines returns, in order, the line of every "#!" mark in src: a line
// expected to carry two problems carries two marks.
func markedLines(src string) []int {
	var lines []int
	for i, l := range strings.Split(src, "\n") {
		for range strings.Count(l, "#!") {
			lines = append(lines, i+1)
		}
	}
	return lines
}

func TestLoad_MinimalFileGetsEveryDefault(t *testing.T) {
	path := writeConfig(t, kaaOK+endpointOK)
	dir := filepath.Dir(path)

	got := mustLoad(t, path)

	want := &Config{
		Path: path,
		Broker: Broker{
			Servers:         []string{"tcp://127.0.0.1:1883"},
			Keepalive:       Duration{30 * time.Second},
			ReconnectSpread: Duration{DefaultReconnectSpread},
		},
		Kaa: Kaa{AppVersion: "app-v1", Extension: "cmx", Dialect: DialectCMX3},
		Agent: Agent{
			StateDir:   "/var/lib/cmx-agent",
			Socket:     "/run/cmx-agent/agent.sock",
			MaxPayload: 1 << 20,
		},
		Endpoints: []Endpoint{{
			Token:       "gw-001",
			Output:      filepath.Join(dir, "out", "gw-001.json"),
			Mode:        0o644,
			HookTimeout: Duration{30 * time.Second},
			OnDrift:     "repair",
		}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("minimal config:\n got %+v\nwant %+v", got, want)
	}
}

func TestLoad_FullFileKeepsEveryKey(t *testing.T) {
	path := writeConfig(t, `
[broker]
servers = ["tls://127.0.0.1:8883", "wss://127.0.0.1:443/mqtt", "mqtt://[::1]:1883"]
client_id = "gateway-7"
username = "gw"
password_file = "secret"
ca_file = "$DIR/cert.pem"
cert_file = "./cert.pem"
key_file = "key.pem"
keepalive = "1m30s"
clean_session = true
reconnect_spread = "2m"

[kaa]
app_version = "my-app-v1"
extension = "cmx-2"
dialect = "cmp7"

[agent]
state_dir = "state/"
socket = "/tmp/x/../agent.sock"
max_payload = "512KiB"

[[endpoint]]
token = "gw-001"
name = "net_cfg-2"
output = "/etc//app/net.json"
mode = "600"
owner = "daemon"
group = "adm"
template = "tpl.tmpl"
validate = ["./bin/ok.sh", "--check", "x y"]
hook = ["sh", "-c", "systemctl reload app"]
hook_timeout = "2m"
on_drift = "report"

[[endpoint]]
token = "gw-001"
output = "out/default.json"
on_drift = "ignore"
`)
	dir := filepath.Dir(path)

	got := mustLoad(t, path)

	want := &Config{
		Path: path,
		Broker: Broker{
			Servers:         []string{"tls://127.0.0.1:8883", "wss://127.0.0.1:443/mqtt", "mqtt://[::1]:1883"},
			ClientID:        "gateway-7",
			Username:        "gw",
			PasswordFile:    filepath.Join(dir, "secret"),
			CAFile:          filepath.Join(dir, "cert.pem"),
			CertFile:        filepath.Join(dir, "cert.pem"),
			KeyFile:         filepath.Join(dir, "key.pem"),
			Keepalive:       Duration{90 * time.Second},
			CleanSession:    true,
			ReconnectSpread: Duration{2 * time.Minute},
		},
		Kaa:   Kaa{AppVersion: "my-app-v1", Extension: "cmx-2", Dialect: DialectCMP7},
		Agent: Agent{StateDir: filepath.Join(dir, "state"), Socket: "/tmp/agent.sock", MaxPayload: 512 << 10},
		Endpoints: []Endpoint{{
			Token:       "gw-001",
			Name:        "net_cfg-2",
			Output:      "/etc/app/net.json",
			Mode:        0o600,
			Owner:       "daemon",
			Group:       "adm",
			Template:    filepath.Join(dir, "tpl.tmpl"),
			Validate:    []string{filepath.Join(dir, "bin", "ok.sh"), "--check", "x y"},
			Hook:        []string{"sh", "-c", "systemctl reload app"},
			HookTimeout: Duration{2 * time.Minute},
			OnDrift:     "report",
		}, {
			Token:       "gw-001",
			Output:      filepath.Join(dir, "out", "default.json"),
			Mode:        0o644,
			HookTimeout: Duration{30 * time.Second},
			OnDrift:     "ignore",
		}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("full config:\n got %+v\nwant %+v", got, want)
	}
	if k0, k1 := got.EndpointKey(0), got.EndpointKey(1); k0 != "gw-001/net_cfg-2" || k1 != "gw-001" {
		t.Errorf("EndpointKey = %q, %q; want %q, %q", k0, k1, "gw-001/net_cfg-2", "gw-001")
	}
}

func TestLoad_RelativeConfigPathGivesAbsolutePaths(t *testing.T) {
	path := writeConfig(t, kaaOK+"[agent]\nstate_dir = \"./state\"\n"+endpointOK)
	dir := filepath.Dir(path)
	t.Chdir(dir)

	got := mustLoad(t, "agent.toml")

	if got.Path != path {
		t.Errorf("Path = %q, want %q", got.Path, path)
	}
	if want := filepath.Join(dir, "state"); got.Agent.StateDir != want {
		t.Errorf("StateDir = %q, want %q", got.Agent.StateDir, want)
	}
}

func TestParse_WithoutPathKeepsRelativePathsClean(t *testing.T) {
	got, err := Parse("", []byte(kaaOK+"[agent]\nstate_dir = \"./state//db/\"\n"+endpointOK))
	if err != nil {
		t.Fatal(err)
	}
	if got.Path != "" || got.Agent.StateDir != "state/db" || got.Endpoints[0].Output != "out/gw-001.json" {
		t.Errorf("Path %q, StateDir %q, Output %q; want \"\", \"state/db\", \"out/gw-001.json\"",
			got.Path, got.Agent.StateDir, got.Endpoints[0].Output)
	}
}

func TestParse_AcceptsAlternativeSpellings(t *testing.T) {
	tests := []struct {
		name  string
		src   string
		check func(*Config) bool
	}{
		{"inline array of endpoint tables", "endpoint = [{token = \"a\", output = \"a.json\"}, {token = \"b\", output = \"b.json\"}]\n" + kaaOK,
			func(c *Config) bool { return len(c.Endpoints) == 2 && c.Endpoints[1].Token == "b" }},
		{"dotted keys at the top", `kaa.app_version = "v1"` + "\nbroker.keepalive = \"10s\"\n" + endpointOK,
			func(c *Config) bool { return c.Broker.Keepalive.Duration == 10*time.Second }},
		{"quoted keys", kaaOK + "[\"broker\"]\n'keepalive' = \"10s\"\n" + endpointOK,
			func(c *Config) bool { return c.Broker.Keepalive.Duration == 10*time.Second }},
		{"no reconnect spread", kaaOK + "[broker]\nreconnect_spread = \"0s\"\n" + endpointOK,
			func(c *Config) bool { return c.Broker.ReconnectSpread.Duration == 0 }},
		{"max_payload as an integer of bytes", kaaOK + "[agent]\nmax_payload = 4096\n" + endpointOK,
			func(c *Config) bool { return c.Agent.MaxPayload == 4096 }},
		{"empty strings meaning unset", "[broker]\nclient_id = \"\"\nca_file = \"\"\n" + kaaOK + endpointOK + "template = \"\"\nname = \"\"\n",
			func(c *Config) bool {
				return c.Broker.ClientID == "" && c.Broker.CAFile == "" && c.Endpoints[0].Template == ""
			}},
		{"same token with different cmp7 names", "[kaa]\napp_version = \"v\"\ndialect = \"cmp7\"\n" + endpointOK +
			"[[endpoint]]\ntoken = \"gw-001\"\nname = \"net\"\noutput = \"net.json\"\n",
			func(c *Config) bool { return c.EndpointKey(0) == "gw-001" && c.EndpointKey(1) == "gw-001/net" }},
		{"a UTF-8 byte order mark", "\xef\xbb\xbf" + kaaOK + endpointOK,
			func(c *Config) bool { return c.Kaa.AppVersion == "app-v1" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := mustLoad(t, writeConfig(t, tt.src))
			if !tt.check(cfg) {
				t.Errorf("unexpected config: %+v", cfg)
			}
		})
	}
}

// Every case is a file with one "#!" mark per problem on the line the
// problem must name; want holds a substring of each message, in the order
// reported. Wanted messages beyond the marks are for problems without a line.
func TestLoad_ReportsProblemsAtTheirLines(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want []string
	}{
		// TOML itself.
		{"syntax error", kaaOK + "[broker #!\n" + endpointOK,
			[]string{"invalid TOML: "}},
		{"duplicate key", kaaOK + endpointOK + "token = \"x\" #!\n",
			[]string{"invalid TOML: "}},
		{"wrong type", "[broker]\nkeepalive = 30 #!\n" + kaaOK + endpointOK,
			[]string{`broker.keepalive: must be a duration string such as "30s", not integer`}},
		{"table given as a value", "broker = 1 #!\n" + kaaOK + endpointOK,
			[]string{"broker: must be a table ([broker]), not integer"}},
		{"endpoint given as a table", kaaOK + "[endpoint] #!\ntoken = \"x\"\n",
			[]string{"endpoint: must be an array of tables ([[endpoint]]), not table"}},

		// Unknown keys.
		{"unknown top-level key", "verbose = true #!\n" + kaaOK + endpointOK,
			[]string{"unknown key verbose"}},
		{"unknown key in a table", "[broker]\nfoo = 1 #!\n" + kaaOK + endpointOK,
			[]string{"unknown key broker.foo"}},
		{"key in the wrong case", "[broker]\nKeepAlive = \"1s\" #!\n" + kaaOK + endpointOK,
			[]string{"unknown key broker.KeepAlive (did you mean broker.keepalive?)"}},
		{"unknown sub-table", "[broker.tls] #!\nverify = true\n" + kaaOK + endpointOK,
			[]string{"unknown key broker.tls"}},
		{"unknown key in the second endpoint", kaaOK + endpointOK + "[[endpoint]]\ntoken = \"b\"\noutput = \"b\"\nhooks = [] #!\n",
			[]string{"unknown key endpoint.hooks (endpoint #2)"}},
		{"unknown key in an inline endpoint", "endpoint = [\n {token = \"a\", output = \"a\"},\n {token = \"b\", output = \"b\", x = 1}, #!\n]\n" + kaaOK,
			[]string{"unknown key endpoint.x (endpoint #2)"}},
		{"odd unknown key is quoted", "\"a b\" = 1 #!\n" + kaaOK + endpointOK,
			[]string{`unknown key "a b"`}},

		// Required keys.
		{"no kaa table", endpointOK,
			[]string{"missing required key kaa.app_version"}},
		{"no app_version", "[kaa] #!\ndialect = \"cmx3\"\n" + endpointOK,
			[]string{"missing required key kaa.app_version"}},
		{"no endpoint", kaaOK,
			[]string{"at least one endpoint is required"}},
		{"endpoint without token and output", kaaOK + endpointOK + "[[endpoint]] #! #!\nmode = \"0600\"\n",
			[]string{"endpoint #2: missing required key token", "endpoint #2: missing required key output"}},

		// [broker].
		{"server with an unsupported scheme", "[broker]\nservers = [\n  \"tcp://127.0.0.1:1883\",\n  \"http://127.0.0.1:80\", #!\n]\n" + kaaOK + endpointOK,
			[]string{`broker.servers[1]: "http://127.0.0.1:80": unsupported scheme "http"`}},
		{"server without a port", "[broker]\nservers = [\"tcp://127.0.0.1\"] #!\n" + kaaOK + endpointOK,
			[]string{`broker.servers[0]: "tcp://127.0.0.1": want scheme://host:port`}},
		{"server without a host", "[broker]\nservers = [\"tcp://:1883\"] #!\n" + kaaOK + endpointOK,
			[]string{"want scheme://host:port"}},
		{"server that is no URL", "[broker]\nservers = [\"tcp://127.0.0.1:1883/%zz\"] #!\n" + kaaOK + endpointOK,
			[]string{"not a URL"}},
		{"server with a bad port", "[broker]\nservers = [\"ssl://127.0.0.1:70000\"] #!\n" + kaaOK + endpointOK,
			[]string{`bad port "70000"`}},
		{"no servers", "[broker]\nservers = [] #!\n" + kaaOK + endpointOK,
			[]string{"broker.servers: must list at least one server"}},
		{"servers as a string", "[broker]\nservers = \"tcp://127.0.0.1:1883\" #!\n" + kaaOK + endpointOK,
			[]string{"broker.servers: must be an array of strings, not string"}},
		{"zero keepalive", "[broker]\nkeepalive = \"0s\" #!\n" + kaaOK + endpointOK,
			[]string{`broker.keepalive: must be positive, not "0s"`}},
		{"negative keepalive", "[broker]\nkeepalive = \"-5s\" #!\n" + kaaOK + endpointOK,
			[]string{`broker.keepalive: must be positive, not "-5s"`}},
		{"sub-second keepalive", "[broker]\nkeepalive = \"500ms\" #!\n" + kaaOK + endpointOK,
			[]string{"broker.keepalive: must be between 1s and 18h12m15s"}},
		{"bad keepalive", "[broker]\nkeepalive = \"30\" #!\n" + kaaOK + endpointOK,
			[]string{`broker.keepalive: bad duration "30"`}},
		{"negative reconnect spread", "[broker]\nreconnect_spread = \"-1s\" #!\n" + kaaOK + endpointOK,
			[]string{`broker.reconnect_spread: must be zero or positive, not "-1s"`}},
		{"reconnect spread over an hour", "[broker]\nreconnect_spread = \"2h\" #!\n" + kaaOK + endpointOK,
			[]string{"broker.reconnect_spread: must be at most 1h0m0s"}},
		{"reconnect spread without a unit", "[broker]\nreconnect_spread = \"30\" #!\n" + kaaOK + endpointOK,
			[]string{`broker.reconnect_spread: bad duration "30"`}},
		{"cert_file without key_file", "[broker]\ncert_file = \"cert.pem\" #!\n" + kaaOK + endpointOK,
			[]string{"broker.cert_file: set without broker.key_file"}},
		{"key_file without cert_file", "[broker]\nkey_file = \"key.pem\" #!\n" + kaaOK + endpointOK,
			[]string{"broker.key_file: set without broker.cert_file"}},
		{"missing password_file", "[broker]\npassword_file = \"nope\" #!\n" + kaaOK + endpointOK,
			[]string{"broker.password_file: stat $DIR/nope: no such file or directory"}},
		{"ca_file that is a folder", "[broker]\nca_file = \"adir\" #!\n" + kaaOK + endpointOK,
			[]string{"broker.ca_file: $DIR/adir is not a regular file"}},
		{"missing cert and key files", "[broker]\ncert_file = \"c\" #!\nkey_file = \"k\" #!\n" + kaaOK + endpointOK,
			[]string{"broker.cert_file: stat $DIR/c", "broker.key_file: stat $DIR/k"}},
		{"clean_session not a boolean", "[broker]\nclean_session = \"no\" #!\n" + kaaOK + endpointOK,
			[]string{"broker.clean_session: must be true or false, not string"}},

		// [kaa].
		{"app_version with a slash", "[kaa]\napp_version = \"a/b\" #!\n" + endpointOK,
			[]string{`kaa.app_version: "a/b" is not a valid MQTT topic level: it contains '/'`}},
		{"app_version with a wildcard", "[kaa]\napp_version = \"a+\" #!\n" + endpointOK,
			[]string{`it contains '+'`}},
		{"empty app_version", "[kaa]\napp_version = \"\" #!\n" + endpointOK,
			[]string{"kaa.app_version: \"\" is not a valid MQTT topic level: it is empty"}},
		{"app_version with a NUL", "[kaa]\napp_version = \"a\\u0000\" #!\n" + endpointOK,
			[]string{"it contains a NUL byte"}},
		{"app_version too long", "[kaa]\napp_version = \"" + strings.Repeat("a", 257) + "\" #!\n" + endpointOK,
			[]string{"it is longer than 256 bytes"}},
		{"extension with a hash", kaaOK + "extension = \"cm#x\" #!\n" + endpointOK,
			[]string{`kaa.extension: "cm#x" is not a valid MQTT topic level: it contains '#'`}},
		{"unknown dialect", kaaOK + "dialect = \"cmp8\" #!\n" + endpointOK,
			[]string{`kaa.dialect: must be "cmx3" or "cmp7", not "cmp8"`}},

		// [agent].
		{"bad max_payload", kaaOK + "[agent]\nmax_payload = \"1MB/s\" #!\n" + endpointOK,
			[]string{`agent.max_payload: bad size "1MB/s"`}},
		{"zero max_payload", kaaOK + "[agent]\nmax_payload = \"0KiB\" #!\n" + endpointOK,
			[]string{"agent.max_payload: must be positive"}},
		{"negative max_payload", kaaOK + "[agent]\nmax_payload = -1 #!\n" + endpointOK,
			[]string{"agent.max_payload: must be positive, not -1"}},
		{"empty state_dir", kaaOK + "[agent]\nstate_dir = \"\" #!\n" + endpointOK,
			[]string{"agent.state_dir: must not be empty"}},
		{"socket path too long for a unix socket", kaaOK + "[agent]\nsocket = \"/" + strings.Repeat("s", 110) + "\" #!\n" + endpointOK,
			[]string{"longer than 105 bytes"}},
		{"socket path of 106 bytes leaves no room for the temporary name", kaaOK + "[agent]\nsocket = \"/" + strings.Repeat("s", 105) + "\" #!\n" + endpointOK,
			[]string{"longer than 105 bytes: a unix socket path has 107 bytes at most, and the agent binds .<name>~ beside it first"}},

		{"socket path holding a regular file", kaaOK + "[agent]\nsocket = \"secret\" #!\n" + endpointOK,
			[]string{"agent.socket: $DIR/secret exists and is a regular file, not a socket"}},
		{"socket path holding a folder", kaaOK + "[agent]\nsocket = \"adir\" #!\n" + endpointOK,
			[]string{"agent.socket: $DIR/adir exists and is a folder, not a socket"}},

		// [[endpoint]].
		{"token with a slash", kaaOK + "[[endpoint]]\ntoken = \"gw/1\" #!\noutput = \"o\"\n",
			[]string{`endpoint #1 token: "gw/1" is not a valid MQTT topic level: it contains '/'`}},
		{"name with cmx3", kaaOK + endpointOK + "name = \"net\" #!\n",
			[]string{`endpoint #1 name: only allowed with kaa.dialect = "cmp7"`}},
		{"cmp7 name with a dot", kaaOK + "dialect = \"cmp7\"\n" + endpointOK + "name = \"a.b\" #!\n",
			[]string{`endpoint #1 name: "a.b" may only hold letters, digits, '_' and '-'`}},
		{"cmp7 name of digits", kaaOK + "dialect = \"cmp7\"\n" + endpointOK + "name = \"42\" #!\n",
			[]string{`endpoint #1 name: "42" is all digits`}},
		{"cmp7 name status", kaaOK + "dialect = \"cmp7\"\n" + endpointOK + "name = \"status\" #!\n",
			[]string{`endpoint #1 name: "status" is reserved`}},
		{"cmp7 name error", kaaOK + "dialect = \"cmp7\"\n" + endpointOK + "name = \"error\" #!\n",
			[]string{`endpoint #1 name: "error" is reserved`}},
		{"same output after cleaning", kaaOK + endpointOK + "[[endpoint]]\ntoken = \"b\"\noutput = \"./out//gw-001.json\" #!\n",
			[]string{"endpoint #2 output: $DIR/out/gw-001.json is also the output of endpoint #1 (line 5)"}},
		{"same token", kaaOK + endpointOK + "[[endpoint]]\ntoken = \"gw-001\" #!\noutput = \"b\"\n",
			[]string{`endpoint #2: token "gw-001" is also used by endpoint #1 (line 4)`}},
		{"same token and name", kaaOK + "dialect = \"cmp7\"\n" + endpointOK + "name = \"n\"\n[[endpoint]]\nname = \"n\"\ntoken = \"gw-001\" #!\noutput = \"b\"\n",
			[]string{`endpoint #2: token "gw-001" with name "n" is also used by endpoint #1 (line 5)`}},
		{"output is the database", kaaOK + "[agent]\nstate_dir = \"st\"\n[[endpoint]]\ntoken = \"a\"\noutput = \"st/agent.db\" #!\n",
			[]string{"endpoint #1 output: $DIR/st/agent.db is the agent's database"}},
		{"empty output", kaaOK + "[[endpoint]]\ntoken = \"a\"\noutput = \"\" #!\n",
			[]string{"endpoint #1 output: must not be empty"}},
		{"bad hook_timeout in the second endpoint", kaaOK + endpointOK + "[[endpoint]]\ntoken = \"b\"\noutput = \"b\"\nhook_timeout = \"ten seconds\" #!\n",
			[]string{`endpoint #2 hook_timeout: bad duration "ten seconds"`}},
		{"zero hook_timeout", kaaOK + endpointOK + "hook_timeout = \"0s\" #!\n",
			[]string{`endpoint #1 hook_timeout: must be positive, not "0s"`}},
		{"mode with a non-octal digit", kaaOK + endpointOK + "mode = \"0648\" #!\n",
			[]string{`endpoint #1 mode: bad mode "0648"`}},
		{"mode with setuid", kaaOK + endpointOK + "mode = \"4755\" #!\n",
			[]string{`endpoint #1 mode: bad mode "4755"`}},
		{"mode as an integer", kaaOK + endpointOK + "mode = 644 #!\n",
			[]string{`endpoint #1 mode: must be a string of octal digits such as "0644", not integer`}},
		{"unknown on_drift", kaaOK + endpointOK + "on_drift = \"fix\" #!\n",
			[]string{`endpoint #1 on_drift: must be "repair", "report" or "ignore", not "fix"`}},
		{"hook without a program", kaaOK + endpointOK + "hook = [\"\", \"x\"] #!\n",
			[]string{"endpoint #1 hook: the first element, the program to run, must not be empty"}},
		{"validate without a program", kaaOK + endpointOK + "validate = [\"\"] #!\n",
			[]string{"endpoint #1 validate: the first element"}},
		{"hook as a string", kaaOK + endpointOK + "hook = \"systemctl reload x\" #!\n",
			[]string{"endpoint #1 hook: must be an array of strings, not string"}},
		{"hook with a number", kaaOK + endpointOK + "hook = [\n  \"kill\",\n  1, #!\n]\n",
			[]string{"endpoint #1 hook[1]: must be a string, not integer"}},
		{"validate program that does not exist", kaaOK + endpointOK + "validate = [\"./bin/nope.sh\"] #!\n",
			[]string{"endpoint #1 validate: $DIR/bin/nope.sh does not exist"}},
		{"hook program without an execute bit", kaaOK + endpointOK + "hook = [\"bin/noexec.sh\", \"x\"] #!\n",
			[]string{"endpoint #1 hook: $DIR/bin/noexec.sh is not executable"}},
		{"hook program that is a folder", kaaOK + endpointOK + "hook = [\"./adir\"] #!\n",
			[]string{"endpoint #1 hook: $DIR/adir is a folder, not a program"}},
		{"hook program at its line in a long array", kaaOK + endpointOK + "hook = [\n  \"./bin/gone.sh\", #!\n  \"x\",\n]\n",
			[]string{"endpoint #1 hook: $DIR/bin/gone.sh does not exist"}},
		{"hook program name not in PATH", kaaOK + endpointOK + "hook = [\"cmx-no-such-program\"] #!\n",
			[]string{`endpoint #1 hook: program "cmx-no-such-program" is not found in PATH`}},
		{"owner that does not exist", kaaOK + endpointOK + "owner = \"cmx-no-such-user\" #!\n",
			[]string{`endpoint #1 owner: user "cmx-no-such-user" does not exist on this machine`}},
		{"group that does not exist", kaaOK + endpointOK + "group = \"cmx-no-such-group\" #!\n",
			[]string{`endpoint #1 group: group "cmx-no-such-group" does not exist on this machine`}},
		{"the packaged placeholder token", kaaOK + "[[endpoint]]\ntoken = \"change-me\" #!\noutput = \"o.json\"\n",
			[]string{`endpoint #1 token: "change-me" is the packaged placeholder, not this gateway's token: run cmx-agent init`}},
		{"missing template", kaaOK + endpointOK + "template = \"t.tmpl\" #!\n",
			[]string{"endpoint #1 template: stat $DIR/t.tmpl: no such file or directory"}},

		// Order and completeness.
		{"every problem, in file order", "[[endpoint]]\ntoken = \"a/b\" #!\noutput = \"o\"\n[broker]\nkeepalive = \"x\" #!\nfoo = 1 #!\n[kaa]\napp_version = \"v\"\ndialect = \"x\" #!\n",
			[]string{"endpoint #1 token", "broker.keepalive", "unknown key broker.foo", "kaa.dialect"}},
		{"problems without a line come last", "[broker]\nkeepalive = \"x\" #!\n",
			[]string{"broker.keepalive", "missing required key kaa.app_version", "at least one endpoint is required"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeConfig(t, tt.src)
			dir := filepath.Dir(path)

			ps := loadProblems(t, path)

			lines := markedLines(tt.src)
			if len(ps) != len(tt.want) {
				t.Fatalf("got %d problems, want %d:\n%v", len(ps), len(tt.want), ps)
			}
			for i, p := range ps {
				line := 0
				if i < len(lines) {
					line = lines[i]
				}
				prefix := fmt.Sprintf("%s:%d: ", path, line)
				if line == 0 {
					prefix = path + ": "
				}
				want := strings.ReplaceAll(tt.want[i], "$DIR", dir)
				if s := p.String(); !strings.HasPrefix(s, prefix) || !strings.Contains(s, want) {
					t.Errorf("problem %d = %q\nwant %q followed by a message containing %q", i, s, prefix, want)
				}
			}
		})
	}
}

func TestLoad_UnreadableFileIsOneProblemWithoutLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing.toml")

	ps := loadProblems(t, path)

	if len(ps) != 1 || ps[0].Line != 0 {
		t.Fatalf("problems = %#v, want one without a line", ps)
	}
	if want := path + ": read config: open " + path + ": no such file or directory"; ps[0].String() != want {
		t.Errorf("String() = %q, want %q", ps[0].String(), want)
	}
	_, err := Load(path)
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("errors.Is(%v, fs.ErrNotExist) = false, want true", err)
	}
}

func TestLoad_ExampleConfigIsValid(t *testing.T) {
	path, err := filepath.Abs(filepath.Join("..", "examples", "agent.toml"))
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Dir(path)

	cfg := mustLoad(t, path)

	if cfg.Kaa.AppVersion != "demo-v1" || cfg.Kaa.Dialect != DialectCMX3 {
		t.Errorf("kaa = %+v, want app_version demo-v1, dialect cmx3", cfg.Kaa)
	}
	if !reflect.DeepEqual(cfg.Broker.Servers, []string{"tcp://127.0.0.1:1883"}) {
		t.Errorf("servers = %q", cfg.Broker.Servers)
	}
	if want := filepath.Join(dir, "state"); cfg.Agent.StateDir != want {
		t.Errorf("state_dir = %q, want %q", cfg.Agent.StateDir, want)
	}
	if want := filepath.Join(dir, "state", "agent.sock"); cfg.Agent.Socket != want {
		t.Errorf("socket = %q, want %q", cfg.Agent.Socket, want)
	}
	if len(cfg.Endpoints) != 1 || cfg.Endpoints[0].Output != filepath.Join(dir, "out", "gw-001.json") {
		t.Errorf("endpoints = %+v, want one writing %s", cfg.Endpoints, filepath.Join(dir, "out", "gw-001.json"))
	}
}

func TestProblem_String(t *testing.T) {
	tests := []struct {
		p    Problem
		want string
	}{
		{Problem{Path: "a.toml", Line: 3, Msg: "bad"}, "a.toml:3: bad"},
		{Problem{Path: "a.toml", Msg: "bad"}, "a.toml: bad"},
		{Problem{Line: 3, Msg: "bad"}, "line 3: bad"},
		{Problem{Msg: "bad"}, "bad"},
		{Problem{Path: "a.toml", Line: 3, Msg: "odd", Warning: true}, "a.toml:3: warning: odd"},
	}
	for _, tt := range tests {
		if got := tt.p.String(); got != tt.want {
			t.Errorf("%#v.String() = %q, want %q", tt.p, got, tt.want)
		}
	}
	ps := Problems{tests[0].p, tests[1].p}
	if got, want := ps.Error(), "a.toml:3: bad\na.toml: bad"; got != want {
		t.Errorf("Problems.Error() = %q, want %q", got, want)
	}
}

func TestSize_UnmarshalText(t *testing.T) {
	tests := []struct {
		in      string
		want    Size
		wantErr bool
	}{
		{"100B", 100, false},
		{"100", 100, false},
		{"512KiB", 512 << 10, false},
		{"1MiB", 1 << 20, false},
		{"1 MiB", 1 << 20, false},
		{"3GiB", 3 << 30, false},
		{"1TiB", 1 << 40, false},
		{"2MB", 2000000, false},
		{"2kB", 2000, false},
		{"2KB", 2000, false},
		{"1GB", 1000000000, false},
		{"0B", 0, false},
		{"", 0, true},
		{"MiB", 0, true},
		{"1.5MiB", 0, true},
		{"-1MiB", 0, true},
		{"1mib", 0, true},
		{"1 XB", 0, true},
		{"9999999TiB", 0, true},
		{"99999999999999999999", 0, true},
	}
	for _, tt := range tests {
		var got Size
		err := got.UnmarshalText([]byte(tt.in))
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("UnmarshalText(%q) = %d, %v; want %d, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestSize_MarshalTextRoundTrips(t *testing.T) {
	for _, s := range []Size{0, 1, 1000, 1024, 1 << 20, 1536 << 10, 5 << 40, 1<<20 + 1} {
		text, err := s.MarshalText()
		if err != nil {
			t.Fatal(err)
		}
		var back Size
		if err := back.UnmarshalText(text); err != nil || back != s {
			t.Errorf("%d -> %q -> %d, %v", s, text, back, err)
		}
	}
	if got := Size(1 << 20).String(); got != "1MiB" {
		t.Errorf("String() = %q, want 1MiB", got)
	}
}

func TestFileMode_UnmarshalText(t *testing.T) {
	tests := []struct {
		in      string
		want    FileMode
		wantErr bool
	}{
		{"0644", 0o644, false},
		{"644", 0o644, false},
		{"0600", 0o600, false},
		{"0777", 0o777, false},
		{"0", 0, false},
		{"00000640", 0o640, false},
		{"", 0, true},
		{"1000", 0, true},
		{"0o644", 0, true},
		{"rw-r--r--", 0, true},
		{"-644", 0, true},
		{"0_644", 0, true},
		{"99999999999999999999999", 0, true},
	}
	for _, tt := range tests {
		var got FileMode
		err := got.UnmarshalText([]byte(tt.in))
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("UnmarshalText(%q) = %o, %v; want %o, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
	if got := FileMode(0o640).String(); got != "0640" {
		t.Errorf("String() = %q, want 0640", got)
	}
}

func TestDuration_TextRoundTrips(t *testing.T) {
	var d Duration
	if err := d.UnmarshalText([]byte("1m30s")); err != nil || d.Duration != 90*time.Second {
		t.Fatalf("UnmarshalText(1m30s) = %v, %v", d, err)
	}
	if text, _ := d.MarshalText(); string(text) != "1m30s" {
		t.Errorf("MarshalText = %q, want 1m30s", text)
	}
	if err := d.UnmarshalText([]byte("30")); err == nil {
		t.Errorf("UnmarshalText(30) succeeded, want an error: a duration needs a unit")
	}
}

// The line scanner must not be fooled by text that looks like keys or
// headers inside strings, and must follow dotted keys, quoted keys, inline
// tables and nested arrays of tables.
func TestScanLines_FindsKeysWhereTOMLPutsThem(t *testing.T) {
	doc := `# [fake] header in a comment
a = """
[not_a_table]
b = 1"""
c = '''x = [1
'''''
"d.e" = { f = 1, g = [
  2,
  { h = 3 },
] }
[[t]]
[[t.sub]]
k = 'it''s'
[[t]]
[[t.sub]]
[[t.sub]]
k = "quote \" [x] # y"
dotted . key = 1
[ s . "q k" ]
m = 1979-05-27 07:32:00Z
n = 2
`
	li := scanLines(doc)
	tests := []struct {
		path []seg
		want int
	}{
		{[]seg{keySeg("a")}, 2},
		{[]seg{keySeg("not_a_table")}, 0},
		{[]seg{keySeg("b")}, 0},
		{[]seg{keySeg("c")}, 5},
		{[]seg{keySeg("x")}, 0},
		{[]seg{keySeg("d.e")}, 7},
		{[]seg{keySeg("d.e"), keySeg("g"), idxSeg(0)}, 8},
		{[]seg{keySeg("d.e"), keySeg("g"), idxSeg(1), keySeg("h")}, 9},
		{[]seg{keySeg("t"), idxSeg(0)}, 11},
		{[]seg{keySeg("t"), idxSeg(0), keySeg("sub"), idxSeg(0), keySeg("k")}, 13},
		{[]seg{keySeg("t"), idxSeg(1)}, 14},
		{[]seg{keySeg("t"), idxSeg(1), keySeg("sub"), idxSeg(1)}, 16},
		{[]seg{keySeg("t"), idxSeg(1), keySeg("sub"), idxSeg(1), keySeg("k")}, 17},
		{[]seg{keySeg("t"), idxSeg(1), keySeg("sub"), idxSeg(1), keySeg("dotted"), keySeg("key")}, 18},
		{[]seg{keySeg("s"), keySeg("q k")}, 19},
		{[]seg{keySeg("s"), keySeg("q k"), keySeg("m")}, 20},
		{[]seg{keySeg("s"), keySeg("q k"), keySeg("n")}, 21},
	}
	for _, tt := range tests {
		got, ok := li[pathKey(tt.path)]
		if !ok {
			got = 0
		}
		if got != tt.want {
			t.Errorf("line of %s = %d, want %d", pathKey(tt.path), got, tt.want)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(kaaOK + endpointOK))
	f.Add([]byte("[broker]\nservers = [\"tcp://127.0.0.1:1883\"]\nkeepalive = \"5x\"\n" + kaaOK + "dialect = \"cmp7\"\n" + endpointOK + "name = \"42\"\n"))
	f.Add([]byte(kaaOK + "endpoint = [{token = \"a\", output = \"a\", x = 1}, 3]\n"))
	f.Add([]byte("a = \"\"\"\n[x]\"\"\"\n[[endpoint]]\n[[endpoint.sub]]\n'k' = '''v'''\n"))
	if ex, err := os.ReadFile(filepath.Join("..", "examples", "agent.toml")); err == nil {
		f.Add(ex)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse("fuzz.toml", data)
		if err == nil {
			if cfg == nil || len(cfg.Endpoints) == 0 || cfg.Kaa.AppVersion == "" {
				t.Fatalf("Parse succeeded with an incomplete config: %+v", cfg)
			}
			return
		}
		var ps Problems
		if !errors.As(err, &ps) || len(ps) == 0 {
			t.Fatalf("Parse error %T is not a non-empty Problems: %v", err, err)
		}
		if cfg != nil {
			t.Fatal("Parse returned a config along with problems")
		}
		lines := strings.Count(string(data), "\n") + 1
		for _, p := range ps {
			if p.Line < 0 || p.Line > lines || p.Msg == "" {
				t.Fatalf("problem out of range (file has %d lines): %#v", lines, p)
			}
		}
	})
}

func TestParse_ADotInATopicLevelIsAWarningForRabbitMQ(t *testing.T) {
	tests := []struct {
		name, src string
		line      int
		key       string
	}{
		{"token", "[kaa]\napp_version = \"a\"\n[[endpoint]]\ntoken = \"dev.002\"\noutput = \"o\"\n", 4, `endpoint #1 token: "dev.002"`},
		{"app_version", "[kaa]\napp_version = \"app.v1\"\n[[endpoint]]\ntoken = \"t\"\noutput = \"o\"\n", 2, `kaa.app_version: "app.v1"`},
		{"extension", "[kaa]\napp_version = \"a\"\nextension = \"cmx.1\"\n[[endpoint]]\ntoken = \"t\"\noutput = \"o\"\n", 3, `kaa.extension: "cmx.1"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Parse("a.toml", []byte(tt.src))
			if err != nil {
				t.Fatalf("a dot must not make the file invalid: %v", err)
			}
			if len(cfg.Warnings) != 1 {
				t.Fatalf("warnings %q, want one", cfg.Warnings)
			}
			w := cfg.Warnings[0]
			if !w.Warning || w.Line != tt.line || !strings.Contains(w.Msg, tt.key+" contains a dot: on RabbitMQ, which maps / to . in topics") {
				t.Fatalf("warning %#v, want line %d about %s", w, tt.line, tt.key)
			}
		})
	}
	if cfg, err := Parse("a.toml", []byte(kaaOK+endpointOK)); err != nil || len(cfg.Warnings) != 0 {
		t.Fatalf("a plain file: %v, warnings %q", err, cfg.Warnings)
	}
	// An invalid file lists what makes it invalid; its warnings wait until it is valid.
	_, err := Parse("a.toml", []byte("[kaa]\napp_version = \"a\"\ncolour = 1\n[[endpoint]]\ntoken = \"a.b\"\noutput = \"o\"\n"))
	var probs Problems
	if !errors.As(err, &probs) || len(probs) != 1 || probs[0].Warning {
		t.Fatalf("invalid file: %v, want the one error", err)
	}
}

func TestParse_MetricsListenIsLoopbackUnlessAllowed(t *testing.T) {
	base := "[kaa]\napp_version = \"a\"\n[[endpoint]]\ntoken = \"t\"\noutput = \"/tmp/o.json\"\n[agent]\n"
	cases := []struct {
		name, agent, problem string
	}{
		{"loopback v4", "metrics_listen = \"127.0.0.1:9464\"\n", ""},
		{"loopback v6", "metrics_listen = \"[::1]:9464\"\n", ""},
		{"localhost", "metrics_listen = \"localhost:9464\"\n", ""},
		{"all interfaces refused", "metrics_listen = \"0.0.0.0:9464\"\n", "is not a loopback address; set metrics_allow_remote = true"},
		{"all interfaces allowed", "metrics_listen = \"0.0.0.0:9464\"\nmetrics_allow_remote = true\n", ""},
		{"not host:port", "metrics_listen = \"9464\"\n", "is not host:port"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("/x/agent.toml", []byte(base+tc.agent))
			switch {
			case tc.problem == "" && err != nil:
				t.Errorf("refused: %v", err)
			case tc.problem != "" && (err == nil || !strings.Contains(err.Error(), tc.problem)):
				t.Errorf("error %v, want one saying %q", err, tc.problem)
			}
		})
	}
}

func TestParse_MaxPayloadIsAtMostMQTTsLargestPacket(t *testing.T) {
	base := "[kaa]\napp_version = \"a\"\n[[endpoint]]\ntoken = \"t\"\noutput = \"/tmp/o.json\"\n[agent]\n"
	for _, tc := range []struct {
		value string
		ok    bool
	}{{`"256MiB"`, true}, {`"1MiB"`, true}, {`"257MiB"`, false}, {`"2GiB"`, false}, {`"4GiB"`, false}} {
		_, err := Parse("/x/agent.toml", []byte(base+"max_payload = "+tc.value+"\n"))
		if (err == nil) != tc.ok {
			t.Errorf("max_payload = %s: error %v, want ok=%v", tc.value, err, tc.ok)
		}
	}
}
