package config

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/cmx-agent/cmx-agent/cmx"
)

// The file is decoded by toml into plain maps and then read key by key here
// rather than straight into Config: toml stops at the first type error and
// matches keys case-insensitively, and a strict `check` needs every problem
// and exact key names.

type decoder struct {
	file  string // as named by the caller, for problems
	dir   string // folder relative paths are resolved against; "" = keep relative
	lines lineIndex
	probs Problems
	warns Problems
}

func (d *decoder) add(at []seg, format string, args ...any) {
	d.probs = append(d.probs, Problem{Path: d.file, Line: d.lines.line(at...), Msg: fmt.Sprintf(format, args...)})
}

func (d *decoder) warn(at []seg, format string, args ...any) {
	d.warns = append(d.warns, Problem{Path: d.file, Line: d.lines.line(at...), Msg: fmt.Sprintf(format, args...), Warning: true})
}

// table is one TOML table being read, with how problems name its keys.
type table struct {
	d      *decoder
	m      map[string]any
	at     []seg
	prefix string // "broker." for the keys of [broker]
	suffix string // " (endpoint #2)" for the keys of one [[endpoint]]
	label  string // "broker." or "endpoint #2 ", put before a key in messages
}

func (t table) path(key string, more ...seg) []seg {
	p := append(append([]seg(nil), t.at...), keySeg(key))
	return append(p, more...)
}

// setString reports whether key holds a string other than "", whatever else is wrong with it.
func (t table) setString(key string) bool {
	s, ok := t.m[key].(string)
	return ok && s != ""
}

func (t table) has(key string) bool {
	_, ok := t.m[key]
	return ok
}

// unknown reports every key not in allowed, in file order.
func (t table) unknown(allowed ...string) {
	keys := slices.Collect(maps.Keys(t.m))
	slices.SortFunc(keys, func(a, b string) int {
		return cmp.Or(cmp.Compare(t.d.lines.line(t.path(a)...), t.d.lines.line(t.path(b)...)), cmp.Compare(a, b))
	})
	for _, k := range keys {
		if slices.Contains(allowed, k) {
			continue
		}
		hint := ""
		for _, a := range allowed {
			if strings.EqualFold(a, k) {
				hint = fmt.Sprintf(" (did you mean %s%s?)", t.prefix, a)
			}
		}
		t.d.add(t.path(k), "unknown key %s%s%s%s", t.prefix, quoteKey(k), t.suffix, hint)
	}
}

// quoteKey quotes a key the way TOML would need it written, so that messages
// name odd keys unambiguously.
func quoteKey(k string) string {
	if k != "" && strings.IndexFunc(k, func(r rune) bool { return r > 127 || !isBareKeyByte(byte(r)) }) < 0 {
		return k
	}
	return strconv.Quote(k)
}

func tomlType(v any) string {
	switch v.(type) {
	case string:
		return "string"
	case int64:
		return "integer"
	case float64:
		return "float"
	case bool:
		return "boolean"
	case []any:
		return "array"
	case []map[string]any:
		return "array of tables"
	case map[string]any:
		return "table"
	case time.Time:
		return "datetime"
	}
	return fmt.Sprintf("%T", v)
}

func (t table) wrongType(key string, want string, v any) {
	t.d.add(t.path(key), "%s%s: must be %s, not %s", t.label, key, want, tomlType(v))
}

// str stores key's string into dst and reports whether it did.
func (t table) str(key string, dst *string) bool {
	v, ok := t.m[key]
	if !ok {
		return false
	}
	s, ok := v.(string)
	if !ok {
		t.wrongType(key, "a string", v)
		return false
	}
	*dst = s
	return true
}

// nonEmpty is str for keys where "" has no meaning.
func (t table) nonEmpty(key string, dst *string) bool {
	var s string
	if !t.str(key, &s) {
		return false
	}
	if s == "" {
		t.d.add(t.path(key), "%s%s: must not be empty", t.label, key)
		return false
	}
	*dst = s
	return true
}

func (t table) boolean(key string, dst *bool) bool {
	v, ok := t.m[key]
	if !ok {
		return false
	}
	b, ok := v.(bool)
	if !ok {
		t.wrongType(key, "true or false", v)
		return false
	}
	*dst = b
	return true
}

// strs stores an array of strings, reporting each bad element at its line.
func (t table) strs(key string, dst *[]string) bool {
	v, ok := t.m[key]
	if !ok {
		return false
	}
	arr, ok := v.([]any)
	if !ok {
		t.wrongType(key, "an array of strings", v)
		return false
	}
	out := make([]string, 0, len(arr))
	good := true
	for i, e := range arr {
		s, ok := e.(string)
		if !ok {
			t.d.add(t.path(key, idxSeg(i)), "%s%s[%d]: must be a string, not %s", t.label, key, i, tomlType(e))
			good = false
			continue
		}
		out = append(out, s)
	}
	if good {
		*dst = out
	}
	return good
}

// duration stores a positive Go duration.
func (t table) duration(key string, dst *Duration) bool {
	return t.durationOrZero(key, false, dst)
}

// durationOrZero stores a Go duration that is positive, or also zero when zeroOK.
func (t table) durationOrZero(key string, zeroOK bool, dst *Duration) bool {
	v, ok := t.m[key]
	if !ok {
		return false
	}
	s, ok := v.(string)
	if !ok {
		t.wrongType(key, `a duration string such as "30s"`, v)
		return false
	}
	var dur Duration
	if err := dur.UnmarshalText([]byte(s)); err != nil {
		t.d.add(t.path(key), "%s%s: bad duration %q, want Go syntax such as \"30s\" or \"1m30s\"", t.label, key, s)
		return false
	}
	if dur.Duration < 0 || dur.Duration == 0 && !zeroOK {
		want := "positive"
		if zeroOK {
			want = "zero or positive"
		}
		t.d.add(t.path(key), "%s%s: must be %s, not %q", t.label, key, want, s)
		return false
	}
	*dst = dur
	return true
}

// size stores a positive size given as a string with a unit or as an
// integer of bytes.
func (t table) size(key string, dst *Size) bool {
	v, ok := t.m[key]
	if !ok {
		return false
	}
	var sz Size
	switch v := v.(type) {
	case int64:
		sz = Size(v)
	case string:
		var err error
		if sz, err = parseSize(v); err != nil {
			t.d.add(t.path(key), "%s%s: bad size %q, want a number of bytes with a unit such as \"512KiB\", \"1MiB\" or \"2MB\"", t.label, key, v)
			return false
		}
	default:
		t.wrongType(key, `a size such as "1MiB" or an integer of bytes`, v)
		return false
	}
	if sz <= 0 {
		t.d.add(t.path(key), "%s%s: must be positive, not %v", t.label, key, v)
		return false
	}
	*dst = sz
	return true
}

func (t table) mode(key string, dst *FileMode) bool {
	v, ok := t.m[key]
	if !ok {
		return false
	}
	s, ok := v.(string)
	if !ok {
		// An integer is refused rather than guessed at: 644 and 0o644 are
		// different numbers and a file mode is no place for surprises.
		t.wrongType(key, `a string of octal digits such as "0644"`, v)
		return false
	}
	m, err := parseFileMode(s)
	if err != nil {
		t.d.add(t.path(key), "%s%s: bad mode %q, want octal permission bits no larger than \"0777\", such as \"0644\"", t.label, key, s)
		return false
	}
	*dst = m
	return true
}

// filePath stores a path resolved against the config's folder. With
// optional, "" is accepted and stays "".
func (t table) filePath(key string, dst *string, optional bool) bool {
	var s string
	if optional {
		if !t.str(key, &s) {
			return false
		}
	} else if !t.nonEmpty(key, &s) {
		return false
	}
	if strings.IndexByte(s, 0) >= 0 {
		t.d.add(t.path(key), "%s%s: path contains a NUL byte", t.label, key)
		return false
	}
	*dst = t.d.resolve(s)
	return true
}

// readableFile is filePath for files the agent reads: when set they must be
// readable regular files now, so that a typo fails `check`, not the first
// connection hours later.
func (t table) readableFile(key string, dst *string) bool {
	if !t.filePath(key, dst, true) || *dst == "" {
		return false
	}
	if err := checkReadable(*dst); err != nil {
		t.d.add(t.path(key), "%s%s: %v", t.label, key, err)
		return false
	}
	return true
}

func checkReadable(path string) error {
	// Stat first: opening a FIFO for reading would block until a writer
	// comes.
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", path)
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	return f.Close()
}

// configFlag is " --config FILE" for a message that suggests a command on this file.
func (d *decoder) configFlag() string {
	if d.file == "" {
		return ""
	}
	return " --config " + d.file
}

func (d *decoder) resolve(p string) string {
	if p == "" {
		return ""
	}
	if d.dir != "" && !filepath.IsAbs(p) {
		return filepath.Join(d.dir, p)
	}
	return filepath.Clean(p)
}

// argv stores a command line; when not empty its program must be named and must run: a program
// named with a "/" is a path, resolved like every other path in the file; a bare name is looked up
// in PATH, as the agent will when it runs it.
func (t table) argv(key string, dst *[]string) bool {
	var args []string
	if !t.strs(key, &args) {
		return false
	}
	good := true
	if len(args) > 0 && args[0] == "" {
		t.d.add(t.path(key, idxSeg(0)), "%s%s: the first element, the program to run, must not be empty", t.label, key)
		good = false
	}
	for i, a := range args {
		if strings.IndexByte(a, 0) >= 0 {
			t.d.add(t.path(key, idxSeg(i)), "%s%s[%d]: contains a NUL byte", t.label, key, i)
			good = false
		}
	}
	if !good {
		return false
	}
	if len(args) > 0 {
		args[0] = t.d.program(args[0])
		if err := checkProgram(args[0]); err != nil {
			t.d.add(t.path(key, idxSeg(0)), "%s%s: %v", t.label, key, err)
			return false
		}
	}
	*dst = args
	return true
}

// program resolves a command's argv[0]: with a "/" it is a path, relative to the configuration's
// folder; a bare name stays a PATH lookup. Without a folder a relative path stays as written, since
// cleaning "./x" would turn it into the bare name "x".
func (d *decoder) program(name string) string {
	if !strings.Contains(name, "/") || d.dir == "" && !filepath.IsAbs(name) {
		return name
	}
	return d.resolve(name)
}

// checkProgram says why name cannot be started: a path that is missing, a folder, or without an
// execute bit for this user, or a bare name PATH does not hold.
func checkProgram(name string) error {
	if !strings.Contains(name, "/") {
		if _, err := exec.LookPath(name); err != nil {
			return fmt.Errorf("program %q is not found in PATH (%s); name it by its path", name, os.Getenv("PATH"))
		}
		return nil
	}
	fi, err := os.Stat(name)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%s does not exist", name)
	case err != nil:
		return err
	case fi.IsDir():
		return fmt.Errorf("%s is a folder, not a program", name)
	}
	// LookPath checks a path as exec will start it: a regular file this user may execute.
	if _, err := exec.LookPath(name); err != nil {
		return fmt.Errorf("%s is not executable (mode %v)", name, fi.Mode())
	}
	return nil
}

// account stores an output's owner or group (key "owner" or "group"): a number, or a name this
// machine knows, as the agent will look it up before each write.
func (t table) account(key string, dst *string) bool {
	var name string
	if !t.str(key, &name) {
		return false
	}
	if err := checkAccount(key, name); err != nil {
		t.d.add(t.path(key), "%s%s: %v", t.label, key, err)
		return false
	}
	*dst = name
	return true
}

func checkAccount(key, name string) error {
	if name == "" {
		return nil
	}
	if n, err := strconv.Atoi(name); err == nil && n >= 0 {
		return nil
	}
	var err error
	kind := "user"
	if key == "group" {
		kind = "group"
		_, err = user.LookupGroup(name)
	} else {
		_, err = user.Lookup(name)
	}
	var unknownUser user.UnknownUserError
	var unknownGroup user.UnknownGroupError
	switch {
	case errors.As(err, &unknownUser), errors.As(err, &unknownGroup):
		return fmt.Errorf("%s %q does not exist on this machine: create it, or name an existing %s or a number", kind, name, kind)
	case err != nil:
		return fmt.Errorf("look up %s %q: %w", kind, name, err)
	}
	return nil
}

// topicLevel checks a value that becomes one level of an MQTT topic.
func (t table) topicLevel(key, s string) bool {
	if err := checkTopicLevel(s); err != nil {
		t.d.add(t.path(key), "%s%s: %q is not a valid MQTT topic level: %v", t.label, key, s, err)
		return false
	}
	if strings.Contains(s, ".") {
		// Valid MQTT, and fine on mosquitto. RabbitMQ routes MQTT topics as AMQP routing keys, with
		// "/" turned into ".", and turns every "." back into "/" on delivery: the level arrives
		// split in two and no topic the agent subscribed to matches it.
		t.d.warn(t.path(key), "%s%s: %q contains a dot: on RabbitMQ, which maps / to . in topics, this topic level arrives split in two and the agent never receives its messages", t.label, key, s)
	}
	return true
}

func checkTopicLevel(s string) error {
	if len(s) > 256 {
		return fmt.Errorf("it is longer than 256 bytes")
	}
	return cmx.CheckLevel(s)
}

// sub returns the table at key of t, reporting a key of another type.
func (t table) sub(key string) (table, bool) {
	v, ok := t.m[key]
	if !ok {
		return table{}, false
	}
	m, ok := v.(map[string]any)
	if !ok {
		t.d.add(t.path(key), "%s%s: must be a table ([%s]), not %s", t.prefix, key, key, tomlType(v))
		return table{}, false
	}
	return table{d: t.d, m: m, at: t.path(key), prefix: key + ".", label: key + "."}, true
}

func (d *decoder) config(raw map[string]any, cfg *Config) {
	root := table{d: d, m: raw}
	root.unknown("broker", "kaa", "agent", "trust", "endpoint")

	cfg.Broker = Broker{Servers: []string{DefaultServer}, Keepalive: Duration{DefaultKeepalive}, ReconnectSpread: Duration{DefaultReconnectSpread}}
	if t, ok := root.sub("broker"); ok {
		d.broker(t, &cfg.Broker)
	}

	cfg.Kaa = Kaa{Extension: DefaultExtension, Dialect: DefaultDialect}
	dialectOK := true
	if t, ok := root.sub("kaa"); ok {
		dialectOK = d.kaa(t, &cfg.Kaa)
	} else if !root.has("kaa") {
		d.add(nil, "missing required key kaa.app_version (there is no [kaa] table)")
	} else {
		dialectOK = false
	}

	cfg.Agent = Agent{StateDir: d.resolve(DefaultStateDir), Socket: d.resolve(DefaultSocket), MaxPayload: DefaultMaxPayload}
	if t, ok := root.sub("agent"); ok {
		d.agent(t, &cfg.Agent)
	}

	cfg.Trust = d.trust(root)
	cfg.Endpoints = d.endpoints(root, cfg, dialectOK)
	// An empty client_id stays empty: the agent derives one once and keeps it in its database, so
	// that the gateway's identity towards the broker does not change with its endpoint list.
}

func (d *decoder) broker(t table, b *Broker) {
	t.unknown("servers", "client_id", "username", "password_file", "ca_file", "cert_file", "key_file", "keepalive", "clean_session", "reconnect_spread")
	d.brokerServers(t, b)
	d.brokerClientID(t, b)
	t.str("username", &b.Username)
	d.brokerFiles(t, b)
	d.brokerKeepalive(t, b)
	t.boolean("clean_session", &b.CleanSession)
	d.brokerReconnectSpread(t, b)
	d.brokerCertKeyPair(t)
}

// brokerServers reads broker.servers: at least one, each a URL the agent can dial.
func (d *decoder) brokerServers(t table, b *Broker) {
	if !t.strs("servers", &b.Servers) {
		return
	}
	if len(b.Servers) == 0 {
		d.add(t.path("servers"), "broker.servers: must list at least one server, such as %q", DefaultServer)
	}
	for i, s := range b.Servers {
		if err := checkServer(s); err != nil {
			d.add(t.path("servers", idxSeg(i)), "broker.servers[%d]: %q: %v", i, s, err)
		}
	}
}

// brokerClientID reads broker.client_id, which MQTT carries as a UTF-8 string of 16-bit length.
func (d *decoder) brokerClientID(t table, b *Broker) {
	if t.str("client_id", &b.ClientID) {
		if !utf8.ValidString(b.ClientID) || strings.IndexByte(b.ClientID, 0) >= 0 || len(b.ClientID) > 65535 {
			d.add(t.path("client_id"), "broker.client_id: must be valid UTF-8 without NUL bytes, at most 65535 bytes")
		}
	}
}

// brokerFiles reads the credential files: readable, and the secret ones not readable by others.
func (d *decoder) brokerFiles(t table, b *Broker) {
	if t.readableFile("password_file", &b.PasswordFile) {
		t.secretFile("password_file", b.PasswordFile)
	}
	t.readableFile("ca_file", &b.CAFile)
	t.readableFile("cert_file", &b.CertFile)
	if t.readableFile("key_file", &b.KeyFile) {
		t.secretFile("key_file", b.KeyFile)
	}
}

// brokerKeepalive reads broker.keepalive. MQTT carries it as whole seconds in 16 bits: less than
// a second would silently turn it off.
func (d *decoder) brokerKeepalive(t table, b *Broker) {
	if t.duration("keepalive", &b.Keepalive) {
		if b.Keepalive.Duration < time.Second || b.Keepalive.Duration > 65535*time.Second {
			d.add(t.path("keepalive"), "broker.keepalive: must be between 1s and %v (MQTT counts it in whole seconds, 16 bits), not %v", 65535*time.Second, b.Keepalive.Duration)
		}
	}
}

// brokerReconnectSpread reads broker.reconnect_spread. Every lost connection may wait up to the
// spread: longer leaves a gateway offline for hours after a blip.
func (d *decoder) brokerReconnectSpread(t table, b *Broker) {
	if t.durationOrZero("reconnect_spread", true, &b.ReconnectSpread) && b.ReconnectSpread.Duration > MaxReconnectSpread {
		d.add(t.path("reconnect_spread"), "broker.reconnect_spread: must be at most %v (a lost connection may wait that long before the agent reconnects), not %v", MaxReconnectSpread, b.ReconnectSpread.Duration)
	}
}

// brokerCertKeyPair checks that mutual TLS has both its files. It judges the pairing on what the
// file says, not on whether the files were readable, which is reported on its own.
func (d *decoder) brokerCertKeyPair(t table) {
	certSet, keySet := t.setString("cert_file"), t.setString("key_file")
	switch {
	case certSet && !keySet:
		d.add(t.path("cert_file"), "broker.cert_file: set without broker.key_file; mutual TLS needs both")
	case keySet && !certSet:
		d.add(t.path("key_file"), "broker.key_file: set without broker.cert_file; mutual TLS needs both")
	}
}

// UsesTLS reports whether the broker URL server connects with TLS: ssl://, tls://, mqtts:// and
// wss://. tcp:// and ws:// stay plain whatever the TLS settings.
func UsesTLS(server string) bool {
	u, err := url.Parse(server)
	if err != nil {
		return false
	}
	switch u.Scheme {
	case "ssl", "tls", "mqtts", "wss":
		return true
	}
	return false
}

func checkServer(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("not a URL: %w", err)
	}
	switch u.Scheme {
	case "tcp", "mqtt", "ssl", "tls", "mqtts", "ws", "wss":
	case "":
		return fmt.Errorf("no scheme, want a URL such as %q", DefaultServer)
	default:
		return fmt.Errorf("unsupported scheme %q, want tcp, mqtt, ssl, tls, mqtts, ws or wss", u.Scheme)
	}
	if u.Opaque != "" || u.Hostname() == "" || u.Port() == "" {
		return fmt.Errorf("want scheme://host:port, such as %q", DefaultServer)
	}
	if p, err := strconv.ParseUint(u.Port(), 10, 16); err != nil || p == 0 {
		return fmt.Errorf("bad port %q", u.Port())
	}
	return nil
}

// kaa reads [kaa] and reports whether the dialect is known, which the
// endpoints' name checks depend on.
func (d *decoder) kaa(t table, k *Kaa) bool {
	t.unknown("app_version", "extension", "dialect")
	if !t.has("app_version") {
		d.add(t.at, "missing required key kaa.app_version")
	} else if t.str("app_version", &k.AppVersion) {
		t.topicLevel("app_version", k.AppVersion)
	}
	if t.str("extension", &k.Extension) {
		t.topicLevel("extension", k.Extension)
	}
	var dialect string
	if !t.str("dialect", &dialect) {
		return !t.has("dialect")
	}
	if dialect != DialectCMX3 && dialect != DialectCMP7 {
		d.add(t.path("dialect"), "kaa.dialect: must be %q or %q, not %q", DialectCMX3, DialectCMP7, dialect)
		return false
	}
	k.Dialect = dialect
	return true
}

func (d *decoder) agent(t table, a *Agent) {
	t.unknown("state_dir", "socket", "max_payload", "metrics_listen", "metrics_allow_remote")
	t.filePath("state_dir", &a.StateDir, false)
	if t.filePath("socket", &a.Socket, false) && len(a.Socket) > 105 {
		// sun_path holds 108 bytes with the terminating NUL, and the agent binds
		// .<name>~ beside the socket first (agent.socketTempName), 2 bytes longer.
		d.add(t.path("socket"), "agent.socket: %s is longer than 105 bytes: a unix socket path has 107 bytes at most, and the agent binds .<name>~ beside it first", a.Socket)
	} else if err := CheckSocketPath(a.Socket); err != nil {
		d.add(t.path("socket"), "agent.socket: %v", err)
	}
	if t.size("max_payload", &a.MaxPayload) && a.MaxPayload > MaxPayloadLimit {
		// An MQTT packet cannot be larger; the limit also keeps the value an int on 32-bit
		// gateways (armv7), where 2 GiB wrapped to "no limit".
		d.add(t.path("max_payload"), "agent.max_payload: %d bytes is over MQTT's largest packet (256 MiB)", int64(a.MaxPayload))
	}
	t.boolean("metrics_allow_remote", &a.MetricsAllowRemote)
	if t.str("metrics_listen", &a.MetricsListen) && a.MetricsListen != "" {
		if problem := metricsAddrProblem(a.MetricsListen, a.MetricsAllowRemote); problem != "" {
			d.add(t.path("metrics_listen"), "agent.metrics_listen: %s", problem)
		}
	}
}

// CheckSocketPath refuses a socket path where something other than a socket is: that is someone's
// file, folder or link, which binding the API socket there would replace and stopping would remove.
// A socket there, answering or left by an agent that stopped, is the agent's own business.
func CheckSocketPath(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("socket path: %w", err)
	}
	if fi.Mode().Type() == fs.ModeSocket {
		return nil
	}
	return fmt.Errorf("%s exists and is %s, not a socket: the agent replaces only a socket left by an agent that stopped; move it away or set another agent.socket", path, fileKind(fi.Mode()))
}

// fileKind names a file's type for people.
func fileKind(m fs.FileMode) string {
	switch m.Type() {
	case 0:
		return "a regular file"
	case fs.ModeDir:
		return "a folder"
	case fs.ModeSymlink:
		return "a symbolic link"
	case fs.ModeNamedPipe:
		return "a named pipe"
	case fs.ModeDevice, fs.ModeDevice | fs.ModeCharDevice:
		return "a device"
	}
	return "a special file"
}

// metricsAddrProblem says what is wrong with a metrics address: not host:port, or reachable from
// other machines without the operator having said so (metrics name endpoints and configuration
// ids, which an operator may not want on the network).
func metricsAddrProblem(addr string, remoteOK bool) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Sprintf("%q is not host:port (%v)", addr, err)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Sprintf("%q: port %q is not a number from 0 to 65535", addr, port)
	}
	if remoteOK {
		return ""
	}
	if host == "localhost" {
		return ""
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return ""
	}
	return fmt.Sprintf("%q is not a loopback address; set metrics_allow_remote = true to serve metrics to other machines", addr)
}

// endpoints reads every [[endpoint]], and checks each against those before it.
func (d *decoder) endpoints(root table, cfg *Config, dialectOK bool) []Endpoint {
	tables := d.endpointTables(root)
	if tables == nil {
		return nil
	}
	u := uniqueEndpoints{d: d, outputs: map[string]seenAt{}, ids: map[string]seenAt{}}
	eps := make([]Endpoint, 0, len(tables))
	for i, m := range tables {
		n := i + 1
		t := table{
			d: d, m: m, at: []seg{keySeg("endpoint"), idxSeg(i)},
			prefix: "endpoint.", suffix: fmt.Sprintf(" (endpoint #%d)", n), label: fmt.Sprintf("endpoint #%d ", n),
		}
		e, ok := d.endpoint(t, n, cfg, dialectOK)
		if ok.output {
			u.output(t, n, e)
		}
		if ok.token && ok.name {
			u.id(t, n, e)
		}
		eps = append(eps, e)
	}
	return eps
}

// endpointTables returns the tables of the endpoint key, which TOML allows as [[endpoint]] or as
// endpoint = [{...}]; nil, with the problem added, when there is none or the key is not an array.
func (d *decoder) endpointTables(root table) []map[string]any {
	v, ok := root.m["endpoint"]
	if !ok {
		d.add(nil, "missing [[endpoint]]: at least one endpoint is required")
		return nil
	}
	var tables []map[string]any
	switch v := v.(type) {
	case []map[string]any:
		tables = v
	case []any: // endpoint = [{...}, {...}]
		for i, e := range v {
			m, ok := e.(map[string]any)
			if !ok {
				d.add([]seg{keySeg("endpoint"), idxSeg(i)}, "endpoint #%d: must be a table, not %s", i+1, tomlType(e))
				continue
			}
			tables = append(tables, m)
		}
	default:
		d.add([]seg{keySeg("endpoint")}, "endpoint: must be an array of tables ([[endpoint]]), not %s", tomlType(v))
		return nil
	}
	if len(tables) == 0 {
		d.add([]seg{keySeg("endpoint")}, "missing [[endpoint]]: at least one endpoint is required")
		return nil
	}
	return tables
}

// endpointKeysOK says which of an endpoint's identifying keys were read without a problem: only
// those are compared with the other endpoints'.
type endpointKeysOK struct{ token, name, output bool }

// endpoint reads the n-th [[endpoint]], t.
func (d *decoder) endpoint(t table, n int, cfg *Config, dialectOK bool) (Endpoint, endpointKeysOK) {
	e := Endpoint{Mode: DefaultMode, HookTimeout: Duration{DefaultHookTimeout}, OnDrift: DefaultOnDrift}
	t.unknown("token", "name", "output", "mode", "owner", "group", "template", "validate", "hook", "hook_timeout", "on_drift", "require_signed")
	var ok endpointKeysOK
	ok.token = d.endpointToken(t, n, &e)
	ok.name = d.endpointName(t, n, cfg.Kaa.Dialect, dialectOK, &e)
	if !t.has("output") {
		d.add(t.at, "endpoint #%d: missing required key output", n)
	} else if t.filePath("output", &e.Output, false) {
		ok.output = d.checkOutput(t, n, e.Output, cfg.Agent)
	}
	t.mode("mode", &e.Mode)
	t.account("owner", &e.Owner)
	t.account("group", &e.Group)
	t.readableFile("template", &e.Template)
	t.argv("validate", &e.Validate)
	t.argv("hook", &e.Hook)
	t.duration("hook_timeout", &e.HookTimeout)
	d.endpointOnDrift(t, n, &e)
	d.requireSigned(t, n, cfg.Trust, &e.RequireSigned)
	return e, ok
}

// endpointToken reads the required token, a topic level, and refuses the packaged placeholder.
func (d *decoder) endpointToken(t table, n int, e *Endpoint) bool {
	if !t.has("token") {
		d.add(t.at, "endpoint #%d: missing required key token", n)
		return false
	}
	if !t.str("token", &e.Token) || !t.topicLevel("token", e.Token) {
		return false
	}
	if e.Token == PlaceholderToken {
		// Every unconfigured gateway behind a shared broker would share this token and client id.
		d.add(t.path("token"), "endpoint #%d token: %q is the packaged placeholder, not this gateway's token: run cmx-agent init --force%s to write this gateway's configuration (or edit the file)", n, e.Token, d.configFlag())
		return false
	}
	return true
}

// endpointName reads the optional name of a named configuration, which only the 7/CMP dialect
// has; with an unknown dialect a name is not judged (the dialect's own problem says enough).
func (d *decoder) endpointName(t table, n int, dialect string, dialectOK bool, e *Endpoint) bool {
	if t.has("name") && !t.str("name", &e.Name) {
		return false
	}
	if e.Name == "" {
		return true
	}
	switch {
	case !dialectOK:
		return false
	case dialect != DialectCMP7:
		d.add(t.path("name"), "endpoint #%d name: only allowed with kaa.dialect = %q (named configurations are a 7/CMP feature)", n, DialectCMP7)
		return false
	}
	if err := cmx.CheckConfigName(e.Name); err != nil {
		d.add(t.path("name"), "endpoint #%d name: %q %v", n, e.Name, err)
		return false
	}
	return true
}

// endpointOnDrift reads on_drift, one of the three policies.
func (d *decoder) endpointOnDrift(t table, n int, e *Endpoint) {
	var drift string
	if !t.str("on_drift", &drift) {
		return
	}
	switch drift {
	case OnDriftRepair, OnDriftReport, OnDriftIgnore:
		e.OnDrift = drift
	default:
		d.add(t.path("on_drift"), "endpoint #%d on_drift: must be %q, %q or %q, not %q", n, OnDriftRepair, OnDriftReport, OnDriftIgnore, drift)
	}
}

// seenAt is where an output or identity was first seen: the endpoint's number (1-based) and line.
type seenAt struct{ n, line int }

// uniqueEndpoints refuses an endpoint whose output, or whose identity (token and name), an
// earlier endpoint has: two endpoints would write one file, or share one set of topics.
type uniqueEndpoints struct {
	d       *decoder
	outputs map[string]seenAt
	ids     map[string]seenAt
}

func (u uniqueEndpoints) output(t table, n int, e Endpoint) {
	line := u.d.lines.line(t.path("output")...)
	if first, dup := u.outputs[e.Output]; dup {
		u.d.add(t.path("output"), "endpoint #%d output: %s is also the output of endpoint #%d (line %d)", n, e.Output, first.n, first.line)
		return
	}
	u.outputs[e.Output] = seenAt{n, line}
}

func (u uniqueEndpoints) id(t table, n int, e Endpoint) {
	line := u.d.lines.line(t.path("token")...)
	what := fmt.Sprintf("token %q", e.Token)
	if e.Name != "" {
		what += fmt.Sprintf(" with name %q", e.Name)
	}
	if first, dup := u.ids[e.Key()]; dup {
		u.d.add(t.path("token"), "endpoint #%d: %s is also used by endpoint #%d (line %d)", n, what, first.n, first.line)
		return
	}
	u.ids[e.Key()] = seenAt{n, line}
}

// checkOutput refuses outputs that would overwrite the agent's own files.
func (d *decoder) checkOutput(t table, n int, out string, a Agent) bool {
	var what string
	switch out {
	case a.StateDir:
		what = "agent.state_dir"
	case a.Socket:
		what = "agent.socket"
	case filepath.Join(a.StateDir, "agent.db"):
		what = "the agent's database in agent.state_dir"
	default:
		return true
	}
	d.add(t.path("output"), "endpoint #%d output: %s is %s", n, out, what)
	return false
}
