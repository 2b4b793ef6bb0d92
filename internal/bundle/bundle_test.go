package bundle

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/cmx-agent/cmx-agent/agent"
)

// The secrets of the gateway in secretConfig. None of them may appear in any file of a bundle.
const (
	passwordSecret = "pw-Secret-0x5eed"
	urlSecret      = "url-Secret-42"
	commentSecret  = "comment-Secret-7"
	keySecret      = "MIIEkeyMaterialSecretLine0123456789abcdefABCDEF"
	certSecret     = "MIIBcertContentMarker0123456789"
	outputSecret   = "output-Secret-device-password"
)

var allSecrets = []string{passwordSecret, urlSecret, commentSecret, keySecret, certSecret, outputSecret}

// gateway is a configuration full of secrets, in a folder of its own.
type gateway struct {
	dir, config, socket, output string
}

func newGateway(t *testing.T, extraBroker string) gateway {
	t.Helper()
	dir := t.TempDir()
	g := gateway{dir: dir, config: filepath.Join(dir, "agent.toml"), socket: filepath.Join(dir, "agent.sock"), output: filepath.Join(dir, "out", "gw-001.json")}
	write(t, filepath.Join(dir, "password"), passwordSecret+"\n", 0o600)
	write(t, filepath.Join(dir, "client.key"), "-----BEGIN PRIVATE KEY-----\n"+keySecret+"\n-----END PRIVATE KEY-----\n", 0o600)
	write(t, filepath.Join(dir, "client.crt"), "-----BEGIN CERTIFICATE-----\n"+certSecret+"\n-----END CERTIFICATE-----\n", 0o644)
	write(t, filepath.Join(dir, "ca.crt"), "-----BEGIN CERTIFICATE-----\n"+certSecret+"\n-----END CERTIFICATE-----\n", 0o644)
	write(t, g.output, `[{"db_password": "`+outputSecret+`"}]`, 0o644)
	write(t, g.config, `# gateway 7; the old broker password was `+commentSecret+`
[broker]
servers = ["tcp://gw:`+urlSecret+`@127.0.0.1:1883", "tls://127.0.0.1:8883"]
username = "gw"
password_file = "password"
ca_file = "ca.crt"
cert_file = "client.crt"
key_file = "client.key"
`+extraBroker+`
[kaa]
app_version = "demo-v1"

[agent]
state_dir = "state"
socket = "agent.sock"

[[endpoint]]
token = "gw-001"
output = "out/gw-001.json"
hook = ["systemctl", "reload", "app"]
`, 0o640)
	if err := os.MkdirAll(filepath.Join(dir, "state"), 0o700); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(dir, "state", "agent.db"), strings.Repeat("\x00", 32768), 0o600)
	return g
}

func write(t *testing.T, path, data string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil { // whatever the umask
		t.Fatal(err)
	}
}

// fakeAgent answers GET /v1/status on the socket as the running agent would, with the given
// status.
func fakeAgent(t *testing.T, socket string, st agent.Status) {
	t.Helper()
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/status" {
			http.NotFound(w, r)
			return
		}
		json.NewEncoder(w).Encode(st)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

func appliedStatus(g gateway, hash string) agent.Status {
	return agent.Status{
		Dialect: "cmx3",
		// A cause quoting the server URL: the agent redacts it, and the bundle must not rely on it.
		LastError: "dial tcp://gw:" + urlSecret + "@127.0.0.1:1883: connection refused",
		Endpoints: []agent.EndpointStatus{{
			Key: "gw-001", Token: "gw-001", Output: g.output, Applied: true, AppliedID: "42",
			AppliedHash: hash, AppliedAt: time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC), LastStatus: "ok",
		}},
	}
}

// journal is a fake journal whose lines quote the secrets, as a careless hook's output might.
func journal(_ context.Context, n int) ([]byte, error) {
	return []byte("cmx-agent[1]: hook said password=" + passwordSecret + " url=tcp://gw:" + urlSecret + "@host:1883\n"), nil
}

func writeBundle(t *testing.T, g gateway, mutate func(*Options)) map[string]entry {
	t.Helper()
	o := Options{
		ConfigPath: g.config, Out: filepath.Join(t.TempDir(), "bundle.tar.gz"), JournalLines: 50,
		Version: "cmx-agent test (commit abc, go)", Journal: journal, StatusTimeout: 2 * time.Second,
	}
	if mutate != nil {
		mutate(&o)
	}
	if err := Write(context.Background(), o); err != nil {
		t.Fatalf("Write: %v", err)
	}
	fi, err := os.Stat(o.Out)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("archive mode %04o, want 0600", fi.Mode().Perm())
	}
	return readArchive(t, o.Out)
}

type entry struct {
	mode int64
	data string
}

func readArchive(t *testing.T, path string) map[string]entry {
	t.Helper()
	files, err := Read(path)
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]entry, len(files))
	for name, f := range files {
		out[name] = entry{mode: f.Mode, data: string(f.Data)}
	}
	return out
}

func sha(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

func TestBundle_NoSecretReachesTheArchive(t *testing.T) {
	g := newGateway(t, "")
	out, _ := os.ReadFile(g.output)
	fakeAgent(t, g.socket, appliedStatus(g, sha(string(out))))
	for _, withOutputs := range []bool{false, true} {
		files := writeBundle(t, g, func(o *Options) { o.WithOutputs = withOutputs })
		for name, f := range files {
			for _, secret := range allSecrets {
				if secret == outputSecret && withOutputs {
					continue // asked for: the outputs' content is in
				}
				if strings.Contains(f.data, secret) {
					t.Errorf("with outputs %v: %s holds the secret %q:\n%s", withOutputs, name, secret, f.data)
				}
			}
			if f.mode != 0o600 {
				t.Errorf("%s has mode %04o in the archive, want 0600", name, f.mode)
			}
		}
		// The parts are there, so the check above had something to look at.
		for _, name := range []string{"version.txt", "config.toml", "check.txt", "files.txt", "status.json", "endpoints.txt", "database.txt", "outputs.txt", "journal.txt", "README.txt"} {
			if _, ok := files[name]; !ok {
				t.Errorf("the bundle lacks %s", name)
			}
		}
		if got := strings.Contains(files["outputs/1-gw-001.json"].data, outputSecret); got != withOutputs {
			t.Errorf("with outputs %v: output content in the bundle = %v", withOutputs, got)
		}
	}
}

func TestBundle_ConfigKeepsPathsAndSettingsWithoutSecrets(t *testing.T) {
	g := newGateway(t, "")
	files := writeBundle(t, g, nil)
	var cfg map[string]any
	if _, err := toml.Decode(files["config.toml"].data, &cfg); err != nil {
		t.Fatalf("config.toml does not parse: %v\n%s", err, files["config.toml"].data)
	}
	broker := cfg["broker"].(map[string]any)
	for k, want := range map[string]string{"username": "gw", "password_file": "password", "key_file": "client.key", "cert_file": "client.crt"} {
		if broker[k] != want {
			t.Errorf("config.toml broker.%s = %v, want %q as written", k, broker[k], want)
		}
	}
	if s := broker["servers"].([]any); s[0] != "tcp://gw:xxxxx@127.0.0.1:1883" || s[1] != "tls://127.0.0.1:8883" {
		t.Errorf("servers = %v, want the password replaced and the rest kept", s)
	}
	if hook := cfg["endpoint"].([]map[string]any)[0]["hook"]; len(hook.([]any)) != 3 {
		t.Errorf("endpoint hook = %v, want it kept", hook)
	}
	if want := ": ok (1 endpoint, dialect cmx3)\n"; !strings.HasSuffix(files["check.txt"].data, want) {
		t.Errorf("check.txt = %q, want it to end in %q as cmx-agent check says it", files["check.txt"].data, want)
	}
	// The files it names: paths, modes and owners.
	for _, want := range []string{"broker.password_file", filepath.Join(g.dir, "password"), "-rw-------", "broker.key_file", "broker.cert_file", "broker.ca_file"} {
		if !strings.Contains(files["files.txt"].data, want) {
			t.Errorf("files.txt lacks %q:\n%s", want, files["files.txt"].data)
		}
	}
}

func TestBundle_AnInvalidConfigIsBundledWithItsProblemsAndUnknownValuesLeftOut(t *testing.T) {
	// A password written straight into the file under a key the agent does not know.
	g := newGateway(t, `password = "`+passwordSecret+`"`)
	files := writeBundle(t, g, nil)
	if !strings.Contains(files["check.txt"].data, "unknown key broker.password") {
		t.Errorf("check.txt does not list the problem:\n%s", files["check.txt"].data)
	}
	if !strings.Contains(files["config.toml"].data, `password = "<redacted: not a key cmx-agent knows>"`) {
		t.Errorf("config.toml does not show the unknown key redacted:\n%s", files["config.toml"].data)
	}
	for name, f := range files {
		if strings.Contains(f.data, passwordSecret) {
			t.Errorf("%s holds the password", name)
		}
	}
}

func TestBundle_StatusHashesAndDatabaseFromTheRunningAgent(t *testing.T) {
	g := newGateway(t, "")
	out, _ := os.ReadFile(g.output)
	fakeAgent(t, g.socket, appliedStatus(g, sha(string(out))))
	files := writeBundle(t, g, nil)

	var st agent.Status
	if err := json.Unmarshal([]byte(files["status.json"].data), &st); err != nil {
		t.Fatalf("status.json: %v", err)
	}
	if len(st.Endpoints) != 1 || st.Endpoints[0].AppliedHash != sha(string(out)) {
		t.Errorf("status.json endpoints = %+v, want the applied hash", st.Endpoints)
	}
	if e := files["endpoints.txt"].data; !strings.Contains(e, "gw-001") || !strings.Contains(e, " 42 ") || !strings.Contains(e, sha(string(out))) {
		t.Errorf("endpoints.txt lacks the applied id and hash:\n%s", e)
	}
	if o := files["outputs.txt"].data; !strings.Contains(o, sha(string(out))) || !strings.Contains(o, "yes") || !strings.Contains(o, "-rw-r--r--") {
		t.Errorf("outputs.txt lacks the output's mode, hash and match:\n%s", o)
	}
	if d := files["database.txt"].data; !strings.Contains(d, "-rw------- ") || !strings.Contains(d, "32768 bytes") || !strings.Contains(d, "drwx------") {
		t.Errorf("database.txt lacks agent.db's size and modes:\n%s", d)
	}

	// A local edit shows as a mismatch.
	write(t, g.output, `[]`, 0o644)
	files = writeBundle(t, g, nil)
	if o := files["outputs.txt"].data; !strings.Contains(o, "no: changed since the agent applied it") {
		t.Errorf("outputs.txt does not report the edited output:\n%s", o)
	}
}

func TestBundle_NoAgentAnsweringIsSaidAndTheBundleStillWritten(t *testing.T) {
	g := newGateway(t, "")
	files := writeBundle(t, g, func(o *Options) {
		o.Journal = func(context.Context, int) ([]byte, error) { return nil, ErrNoJournal }
	})
	if s := files["status.txt"].data; !strings.Contains(s, "no agent answers on "+g.socket) {
		t.Errorf("status.txt = %q, want it to say no agent answered", s)
	}
	if _, ok := files["status.json"]; ok {
		t.Error("status.json present without an agent")
	}
	if _, ok := files["journal.txt"]; ok {
		t.Error("journal.txt present without a journal")
	}
	for _, want := range []string{"no agent answered", "this system has no journalctl"} {
		if !strings.Contains(files["README.txt"].data, want) {
			t.Errorf("README.txt does not say %q:\n%s", want, files["README.txt"].data)
		}
	}
}

func TestBundle_AnUnreadablePasswordFileIsSaid(t *testing.T) {
	g := newGateway(t, "")
	if err := os.Remove(filepath.Join(g.dir, "password")); err != nil {
		t.Fatal(err)
	}
	files := writeBundle(t, g, nil)
	if !strings.Contains(files["README.txt"].data, "scrubbing the password file's content: ") {
		t.Errorf("README.txt does not say the password could not be scrubbed:\n%s", files["README.txt"].data)
	}
}

func TestBundle_JournalLinesAreAskedFor(t *testing.T) {
	g := newGateway(t, "")
	var asked int
	files := writeBundle(t, g, func(o *Options) {
		o.JournalLines = 7
		o.Journal = func(_ context.Context, n int) ([]byte, error) { asked = n; return []byte("line\n"), nil }
	})
	if asked != 7 || files["journal.txt"].data != "line\n" {
		t.Errorf("journal asked for %d lines, journal.txt = %q; want 7 and the lines", asked, files["journal.txt"].data)
	}
}
