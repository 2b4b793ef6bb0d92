// Package config loads and validates the agent's TOML configuration file, as
// fixed by section 2 of the project's outside contract (CONTRACT.md).
//
// Loading is strict and exhaustive: unknown keys, keys of the wrong type,
// missing required keys and values that do not make sense are all errors,
// and Load and Parse report every one of them at once (as Problems), each
// with the line of the offending key when it can be known, so that
// `cmx-agent check` can list them like a compiler does.
//
// Relative paths (agent.state_dir, agent.socket, endpoint output and
// template, broker password_file, ca_file, cert_file and key_file, and the
// program of validate and hook when it holds a "/") are resolved against the
// folder that holds the configuration file, not the working directory: a configuration keeps meaning the same files whichever
// folder the agent is started from. When Parse is given no path, relative
// paths stay relative to the working directory. Every path is cleaned with
// filepath.Clean.
//
// Keys whose documented value "" means "unset" or "the default" (client_id,
// username, password_file, ca_file, cert_file, key_file, name, owner, group,
// template) accept "". Any other key, when present, must hold a valid value:
// `dialect = ""` is an error, not a request for the default.
package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/BurntSushi/toml"
)

// The Kaa dialects the agent speaks (kaa.dialect).
const (
	DialectCMX3 = "cmx3" // the seed, 3/CMX
	DialectCMP7 = "cmp7" // Kaa 1.x, 7/CMP
)

// The on_drift policies of an endpoint.
const (
	OnDriftRepair = "repair"
	OnDriftReport = "report"
	OnDriftIgnore = "ignore"
)

// PlaceholderToken is the token of the packaged agent.toml. A file that still holds it was never
// configured for its gateway: check and run refuse it.
const PlaceholderToken = "change-me"

// MaxPayloadLimit is the largest max_payload: an MQTT packet's remaining length is at most
// 268,435,455 bytes.
const MaxPayloadLimit = 256 << 20

// Defaults for keys left out of the file.
const (
	DefaultServer       = "tcp://127.0.0.1:1883"
	DefaultClientPrefix = "cmx-agent-" // followed by the first endpoint's token
	DefaultKeepalive    = 30 * time.Second
	DefaultExtension    = "cmx"
	DefaultDialect      = DialectCMX3
	DefaultStateDir     = "/var/lib/cmx-agent"
	DefaultSocket       = "/run/cmx-agent/agent.sock"
	DefaultMaxPayload   = Size(1 << 20)
	DefaultMode         = FileMode(0o644)
	DefaultHookTimeout  = 30 * time.Second
	DefaultOnDrift      = OnDriftRepair
)

// The window of the first reconnect after a lost connection (broker.reconnect_spread). The default
// is chosen from a simulated fleet of 100,000 gateways: docs/benchmarks.md, "Fleet reconnection,
// simulated".
const (
	DefaultReconnectSpread = 30 * time.Second
	MaxReconnectSpread     = time.Hour
)

// Config is a loaded, defaulted and validated configuration file.
type Config struct {
	// Path is the absolute path of the file the configuration was loaded
	// from, "" when it was parsed from bytes without a path.
	Path      string     `toml:"-"`
	Broker    Broker     `toml:"broker"`
	Kaa       Kaa        `toml:"kaa"`
	Agent     Agent      `toml:"agent"`
	Trust     Trust      `toml:"trust"`
	Endpoints []Endpoint `toml:"endpoint"`
	// Warnings are problems that leave the file valid, in file order.
	Warnings Problems `toml:"-"`
}

// Broker is the [broker] table: where and how to connect to MQTT.
type Broker struct {
	Servers      []string `toml:"servers"` // tried in order for failover
	ClientID     string   `toml:"client_id"`
	Username     string   `toml:"username"`
	PasswordFile string   `toml:"password_file"` // "" = no password
	CAFile       string   `toml:"ca_file"`       // "" = system roots
	CertFile     string   `toml:"cert_file"`     // with KeyFile, for mutual TLS
	KeyFile      string   `toml:"key_file"`
	Keepalive    Duration `toml:"keepalive"`
	CleanSession bool     `toml:"clean_session"`
	// ReconnectSpread is the window over which the first reconnect after a lost connection is
	// spread at random (0 = within a second, as a refused attempt waits).
	ReconnectSpread Duration `toml:"reconnect_spread"`
}

// Kaa is the [kaa] table: which topics the agent speaks on.
type Kaa struct {
	AppVersion string `toml:"app_version"`
	Extension  string `toml:"extension"`
	Dialect    string `toml:"dialect"` // DialectCMX3 or DialectCMP7
}

// Agent is the [agent] table: the agent's own files and limits.
type Agent struct {
	StateDir   string `toml:"state_dir"`
	Socket     string `toml:"socket"`
	MaxPayload Size   `toml:"max_payload"`
	// MetricsListen is a TCP address (host:port) serving GET /metrics besides the socket; "" = none.
	MetricsListen string `toml:"metrics_listen"`
	// MetricsAllowRemote allows a MetricsListen address that is not loopback.
	MetricsAllowRemote bool `toml:"metrics_allow_remote"`
}

// Endpoint is one [[endpoint]]: a token whose configuration the agent keeps
// in a local file.
type Endpoint struct {
	Token       string   `toml:"token"`
	Name        string   `toml:"name"` // cmp7 only; "" = the default configuration
	Output      string   `toml:"output"`
	Mode        FileMode `toml:"mode"`
	Owner       string   `toml:"owner"` // "" = the agent's own
	Group       string   `toml:"group"`
	Template    string   `toml:"template"` // "" = write the body as received
	Validate    []string `toml:"validate"` // argv; empty = no validation
	Hook        []string `toml:"hook"`     // argv; empty = no hook
	HookTimeout Duration `toml:"hook_timeout"`
	OnDrift     string   `toml:"on_drift"` // OnDriftRepair, OnDriftReport or OnDriftIgnore
	// RequireSigned refuses unsigned configurations: the endpoint's require_signed or
	// trust.require_signed (an endpoint cannot waive what [trust] requires).
	RequireSigned bool `toml:"require_signed"`
}

// Key identifies the endpoint among all endpoints of a valid configuration:
// the token, followed by "/" and the name for a named cmp7 configuration.
// Tokens cannot hold "/", so keys never collide, and they stay the same as
// long as token and name do, which makes them fit for keying stored state.
func (e Endpoint) Key() string {
	if e.Name == "" {
		return e.Token
	}
	return e.Token + "/" + e.Name
}

// EndpointKey returns the Key of endpoint i.
func (c *Config) EndpointKey(i int) string {
	return c.Endpoints[i].Key()
}

// Load reads the file at path and parses it with Parse. A file that cannot
// be read is reported as a single Problem without a line, whose Err is the
// read error.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, Problems{{Path: path, Msg: fmt.Sprintf("read config: %v", err), Err: err}}
	}
	return Parse(path, data)
}

// Parse parses, fills in defaults and validates a configuration file held
// in data. path names the file in problems and anchors relative paths; it
// may be "". On failure the error is a Problems listing everything wrong.
func Parse(path string, data []byte) (*Config, error) {
	d := &decoder{file: path}
	cfg := &Config{}
	if path != "" {
		abs, err := filepath.Abs(path)
		if err != nil {
			return nil, Problems{{Path: path, Msg: fmt.Sprintf("resolve config path: %v", err), Err: err}}
		}
		cfg.Path = abs
		d.dir = filepath.Dir(abs)
	}

	var raw map[string]any
	if _, err := toml.Decode(string(data), &raw); err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, Problems{{Path: path, Line: pe.Position.Line, Msg: "invalid TOML: " + pe.Message, Err: err}}
		}
		return nil, Problems{{Path: path, Msg: fmt.Sprintf("invalid TOML: %v", err), Err: err}}
	}
	d.lines = scanLines(string(data))
	d.config(raw, cfg)
	if len(d.probs) > 0 {
		d.probs.sortByLine()
		return nil, d.probs
	}
	d.warns.sortByLine()
	cfg.Warnings = d.warns
	return cfg, nil
}

// CheckLine is what cmx-agent check prints of a valid configuration after its path: "ok (N
// endpoints, dialect D)". The support bundle writes the same line.
func (c *Config) CheckLine() string {
	return fmt.Sprintf("ok (%s, dialect %s)", CountEndpoints(len(c.Endpoints)), c.Kaa.Dialect)
}

// CountEndpoints is "1 endpoint" or "N endpoints", for lines people read.
func CountEndpoints(n int) string {
	if n == 1 {
		return "1 endpoint"
	}
	return fmt.Sprintf("%d endpoints", n)
}
